"""The one error type a user can cause; the CLI prints it as one message and exits 2."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in input the user controls: a file, a name, a flag, an impossible request."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration file is wrong: names the file, the key path and what was expected."""

    def __init__(self, file: str | Path | None, key: str, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        # Without a file the value came from the command line, and key names the flag.
        where = ": ".join(str(part) for part in (file, key) if part)
        super().__init__(f"{where}: {problem}" if where else problem)
