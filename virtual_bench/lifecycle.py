"""What the bench's started things share: ``async with`` and a scratch folder.

`Started` is the base of `Bench`, `Lab` and pblink.testing's `AppBench`:
``async with X(...) as x`` runs ``await x.start()`` and, on the way out, even
after an error, ``await x.stop()``. `scratch_dir` gives each one its working
folder: the one it was given, or a new temporary one it removes when it stops.
"""

from __future__ import annotations

import abc
import tempfile
from pathlib import Path
from typing import Self


class Started(abc.ABC):
    """An async context manager over ``start()`` / ``stop()``."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Bring it up; ``stop()`` must undo what a partial start did."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Tear it down (also after a failed start)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def scratch_dir(workdir: Path | None, prefix: str
                ) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """(folder, its TemporaryDirectory or None): `workdir`, created with its
    parents, or, when None, a new temporary folder named ``<prefix>...`` (the
    caller calls ``cleanup()`` on it when done)."""
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix=prefix)
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, tmp
