"""The environment the settings are read from: the process environment over `.env`, and NAME_FILE files.

The real environment wins over `.env` in the working directory; NAME wins over NAME_FILE (the Docker and
Kubernetes convention for mounted Secrets). Each value remembers its origin, for `runner.py config`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from migrator.errors import USAGE, MigratorError

MAX_SETTING_FILE = 64 * 1024  # a password or URL; /dev/zero or a log file is a mistake


class Env:
    """The process environment layered over `.env`; `get` also says which of the two answered."""

    def __init__(self, environ: Mapping[str, str], dotenv: Mapping[str, str | None] | None = None):
        self.environ = environ
        self.dotenv = {k: v for k, v in (dotenv or {}).items() if v is not None}
        self._notes: list[str] = []  # what the reading itself has to say (a missing NAME_FILE)
        self._taken = 0

    @classmethod
    def load(cls, dotenv_path: str | Path = ".env") -> "Env":
        dotenv: Mapping[str, str | None] = {}
        if Path(dotenv_path).is_file():
            from dotenv import dotenv_values

            dotenv = dotenv_values(dotenv_path)
        return cls(os.environ, dotenv)

    def get(self, name: str) -> tuple[str | None, str | None]:
        """(value, origin) for a variable; empty values count as unset.

        NAME_FILE (the Docker and Kubernetes convention for mounted Secrets) stands in for NAME: the
        file's content, without its final newline. The real environment wins over `.env`, and NAME
        over NAME_FILE within each.
        """
        for layer, where in ((self.environ, "environment"), (self.dotenv, ".env")):
            if layer.get(name):
                return layer[name], f"{name} ({where})"
            if layer.get(f"{name}_FILE"):
                value = self._read_file(f"{name}_FILE", layer[f"{name}_FILE"], where)
                if value:
                    return value, f"{name}_FILE ({where})"
        return None, None

    def _read_file(self, variable: str, path: str, where: str) -> str | None:
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_SETTING_FILE + 1)
            if len(data) > MAX_SETTING_FILE:
                raise MigratorError(f"{variable} ({where}): {path} is larger than {MAX_SETTING_FILE // 1024} KiB, "
                                    "not a setting; fix the path", USAGE)
            # utf-8-sig: an editor's BOM is not part of the value; nor are the final line breaks.
            return data.decode("utf-8-sig").rstrip("\r\n") or None
        except FileNotFoundError:
            # An optional Secret that was not created: its mount is empty. Said, not fatal.
            self.note(f"note: {variable} ({where}) names {path}, which does not exist: {variable[:-5]} is unset")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise MigratorError(f"{variable} ({where}): {path} cannot be read ({reason}); fix the path or its permissions", USAGE)

    def note(self, text: str) -> None:
        """Something the commands should say once, with the first target resolved."""
        if text not in self._notes:
            self._notes.append(text)

    def take_notes(self) -> list[str]:
        """The notes not yet taken: each is shown once, with whichever target is resolved first."""
        new, self._taken = self._notes[self._taken:], len(self._notes)
        return new

    def value(self, name: str) -> str | None:
        return self.get(name)[0]
