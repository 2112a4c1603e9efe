"""amqtt 0.12.1 plugins for the embedded broker.

amqtt's own `TopicAccessControlListPlugin` only knows fixed per-user topic lists
(no `%u` pattern), so it cannot say "each device may use its own subtree".
`DeviceACLPlugin` does, with the same rules as `broker/mosquitto/acl`:

- a *server user* (configured by name) may publish, subscribe and receive
  anywhere under `<root>/`;
- any other authenticated user is a device whose user name is its conn_id: it
  may use `<root>/<user>` and everything below it, nothing else;
- a client without a user name gets nothing.

Subscriptions are checked on the filter (a device's filter must name its own
conn_id literally, so `<root>/+/down` or `#` is refused with SUBACK 0x80), and
every delivery is checked again (amqtt's RECEIVE action). amqtt does not check
the will topic at all, so the plugin also acts as an authentication plugin that
refuses a CONNECT whose will topic lies outside the user's subtree, and (with
`device_client_id_prefix`) a device CONNECT whose client id is not
`<prefix><user>`: amqtt resumes a persistent session by client id alone and
replays its queued messages unchecked, so a device must not be able to take
another device's client id.

`OpenAuthPlugin` accepts every client (the no-password default) without
flagging the session anonymous: amqtt queues nothing for anonymous sessions,
so with its own `AnonymousAuthPlugin` a server app or device that reconnects
with `clean_session=False` would miss what was published while it was away.

`QueueLimitPlugin` bounds the messages amqtt queues for one offline session
(amqtt's queue is unbounded; Mosquitto's `max_queued_messages` does the same
job): beyond the limit the oldest queued message is dropped and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from amqtt.contexts import Action  # type: ignore[import-untyped]
from amqtt.plugins.base import (  # type: ignore[import-untyped]
    BaseAuthPlugin,
    BasePlugin,
    BaseTopicPlugin,
)
from amqtt.session import Session  # type: ignore[import-untyped]

from broker.defaults import (
    DEFAULT_CLIENT_ID_PREFIX,
    DEFAULT_MAX_QUEUED,
    DEFAULT_ROOT,
    DEFAULT_SERVER_USER,
)

log = logging.getLogger(__name__)


def _levels(topic: str) -> list[str]:
    return topic.split("/")


def allowed(topic: str | None, user: str | None, root: str, server_users: frozenset[str]) -> bool:
    """May `user` use `topic` (a topic name or a subscription filter)?

    The first levels must be `root` (which may have several levels) literally; for
    a device the next level must be its own user name literally (no wildcard), so
    a filter can never reach another device's subtree.
    """
    if not topic or not user:
        return False
    levels = _levels(topic)
    root_levels = _levels(root)
    depth = len(root_levels)
    if levels[:depth] != root_levels:
        return False
    if user in server_users:
        return True
    return len(levels) > depth and levels[depth] == user


class DeviceACLPlugin(BaseTopicPlugin, BaseAuthPlugin):  # type: ignore[misc]
    """Confine each device user to `<root>/<user>/#`; server users get `<root>/#`."""

    @dataclass
    class Config:
        root: str = DEFAULT_ROOT
        server_users: list[str] = field(default_factory=lambda: [DEFAULT_SERVER_USER])
        # None: any client id. A string: a device must connect as `<prefix><user>`.
        device_client_id_prefix: str | None = DEFAULT_CLIENT_ID_PREFIX

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.root: str = self.config.root
        self.server_users = frozenset(self.config.server_users)
        self.prefix: str | None = self.config.device_client_id_prefix
        log.info(
            "topic confinement: devices to %s/<user>/#, %s to %s/#",
            self.root, ", ".join(sorted(self.server_users)) or "no server user", self.root,
        )

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        user = session.username if session is not None else None
        ok = allowed(topic, user, self.root, self.server_users)
        if not ok:
            log.info("refused %s on %r for user %r", action, topic, user)
        return ok

    async def authenticate(self, *, session: Session) -> bool | None:
        """Check what amqtt does not: the will topic and a device's client id.

        Returns None (no opinion) when both are fine, so the password plugin decides.
        """
        user = session.username
        will_ok = allowed(session.will_topic, user, self.root, self.server_users)
        if session.will_flag and not will_ok:
            log.warning("refused CONNECT from %r: will topic %r is outside its subtree",
                        user, session.will_topic)
            return False
        if (
            self.prefix is not None
            and user
            and user not in self.server_users
            and session.client_id != self.prefix + user
        ):
            log.warning("refused CONNECT from device %r: client id %r is not %r",
                        user, session.client_id, self.prefix + user)
            return False
        return None


class OpenAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Accept every client, with a real (non-anonymous) session."""

    async def authenticate(self, *, session: Session) -> bool:
        session.is_anonymous = False
        return True


class QueueLimitPlugin(BasePlugin):  # type: ignore[misc]
    """Keep at most `max_queued` messages queued for one offline session."""

    @dataclass
    class Config:
        max_queued: int = DEFAULT_MAX_QUEUED

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.max_queued: int = self.config.max_queued
        self.dropped = 0

    async def on_broker_retained_message(
        self, *, client_id: str | None, retained_message: Any
    ) -> None:
        if client_id is None or self.max_queued <= 0:
            return  # a topic's retained message, not a session queue
        session = self.context.get_session(client_id)
        if session is None:
            return
        queue = session.retained_messages
        while queue.qsize() > self.max_queued:
            queue.get_nowait()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("queue of offline client %s is full (%d): dropped the oldest message "
                            "(%d dropped so far)", client_id, self.max_queued, self.dropped)
