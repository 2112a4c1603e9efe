"""The `pblink` command line: `pblink --help` lists the commands (see pblink/cli.py)."""
