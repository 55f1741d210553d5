"""The environment the settings are read from: the process environment over `.env`, and NAME_FILE files.

The real environment wins over `.env` in the working directory; NAME wins over NAME_FILE (the Docker and
Kubernetes convention for mounted Secrets). Each value remembers its origin, for `runner.py config`.
A group of settings that together name a connection (host, credentials) is read from one source as a
whole (`source`): the first of the two that names any of them, so a `.env` can never point the real
environment's password at its own host.
"""

from __future__ import annotations

import copy
import io
import os
import re
from pathlib import Path
from typing import Mapping

from migrator import source_files
from migrator.errors import USAGE, MigratorError

MAX_SETTING_FILE = 64 * 1024  # a password or URL; /dev/zero or a log file is a mistake
MAX_DOTENV = 1024 * 1024
# A NAME_FILE that does not exist leaves NAME unset (an optional Secret not created), except for these:
# unset, they would fall back to the default password.
PASSWORD_SETTINGS = ("DB_PASSWORD", "FLYWAY_PASSWORD")
LAYERS = ("environment", ".env")
# libpq reads these itself: left in place they route a connection, and its password, to a host no setting of the
# runner names while every message names the URL's host. The process drops them before anything connects.
LIBPQ_ROUTING = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGSERVICE", "PGSERVICEFILE")
# The names whose values are secrets, masked in every text from outside the runner (a patch's output).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|_KEY$|^MONGO_URL$|^MONGO_READONLY_URL$|^DATABASE_URL$",
                         re.IGNORECASE)
_DOTENV_NAME = re.compile(r"^\s*(?:export\s+)?['\"]?([A-Za-z_][A-Za-z0-9_.]*)['\"]?\s*=")


class Env:
    """The process environment layered over `.env`; `get` also says which of the two answered."""

    def __init__(self, environ: Mapping[str, str], dotenv: Mapping[str, str | None] | None = None,
                 broken: Mapping[str, int] | None = None):
        self.environ = environ
        self.dotenv = {k: v for k, v in (dotenv or {}).items() if v is not None}
        self.bare = {k for k, v in (dotenv or {}).items() if v is None}  # a .env line `NAME` with no `=`
        self.broken = dict(broken or {})  # NAME -> the .env line that sets it and cannot be parsed
        self.layers = LAYERS
        self._notes: list[str] = []  # what the reading itself has to say (a missing NAME_FILE)
        self._taken = 0

    @classmethod
    def load(cls, dotenv_path: str | Path = ".env") -> "Env":
        ignored = [name for name in LIBPQ_ROUTING if os.environ.pop(name, None) is not None]
        path = Path(dotenv_path)
        env = cls(os.environ, *read_dotenv(path)) if path.is_file() else cls(os.environ)
        if ignored:
            env.note(f"note: {', '.join(ignored)} ignored: libpq would connect (and send the password) there, "
                     "while the runner connects where its own settings say (DATABASE_URL, DB_HOST, a secret)")
        return env

    def _layer(self, where: str) -> Mapping[str, str]:
        return self.environ if where == "environment" else self.dotenv

    def names(self, names: tuple[str, ...], where: str) -> list[str]:
        """Which of `names` (or their NAME_FILE) the layer `where` sets, as set."""
        layer = self._layer(where)
        return [n for name in names for n in (name, f"{name}_FILE") if layer.get(n) or
                (where == ".env" and n in self.broken)]

    def source(self, names: tuple[str, ...]) -> tuple["Env", str | None]:
        """This environment narrowed to the first layer that sets any of `names` (the real environment
        first), and that layer's name; (self, None) when neither does. The view shares the notes."""
        for where in self.layers:
            if self.names(names, where):
                view = copy.copy(self)
                view.layers = (where,)
                return view, where
        return self, None

    def get(self, name: str) -> tuple[str | None, str | None]:
        """(value, origin) for a variable; empty values count as unset.

        NAME_FILE (the Docker and Kubernetes convention for mounted Secrets) stands in for NAME: the
        file's content, without its final newline. The real environment wins over `.env`, and NAME
        over NAME_FILE within each.
        """
        for where in self.layers:
            layer = self._layer(where)
            if where == ".env":
                self._refuse_broken(name)
            if layer.get(name):
                return layer[name], f"{name} ({where})"
            if layer.get(f"{name}_FILE"):
                self._refuse_dotenv_file(f"{name}_FILE", where)
                value = self._read_file(f"{name}_FILE", layer[f"{name}_FILE"], where)
                if value:
                    return value, f"{name}_FILE ({where})"
        return None, None

    def set_empty(self, name: str) -> str | None:
        """`get` takes an empty value for unset; where that would mean a default (a password), the origin of
        `name` set to nothing (`NAME=`, or a bare `NAME` line in .env) in a layer consulted, else None."""
        for where in self.layers:
            layer = self._layer(where)
            if (name in layer and not layer[name]) or (where == ".env" and name in self.bare):
                return f"{name} ({where})"
        return None

    def _refuse_broken(self, name: str) -> None:
        """A .env line for this setting that python-dotenv cannot read: an error, never "unset" (for a
        password, unset would mean the default password)."""
        for variable in (name, f"{name}_FILE"):
            if variable in self.broken:
                raise MigratorError(f"{variable} (.env line {self.broken[variable]}): the line cannot be parsed (an "
                                    "unclosed quote?); write it as NAME=value, quoting a value with spaces or #", USAGE)

    @staticmethod
    def _refuse_dotenv_file(variable: str, where: str) -> None:
        """A .env's NAME_FILE is never used as a setting: a .env from a repository could otherwise send any of the
        invoker's files to the host it names, in its folder too (CI's token in .git/config, .npmrc). (Masking still
        reads every named file: secret_values.)"""
        if where == ".env":
            raise MigratorError(f"{variable} ({where}): a .env may not name a file for a setting (a .env from elsewhere "
                                "could send any of your files to the host it names); write the value itself in .env, "
                                f"or set {variable} in the real environment", USAGE)

    def _read_file(self, variable: str, path: str, where: str) -> str | None:
        what = f"{variable} ({where}): {path}"
        try:
            data = read_regular_file(path, MAX_SETTING_FILE)
        except NotRegularFile as exc:
            raise MigratorError(f"{what} is {exc}; point {variable} at the file holding the value", USAGE)
        except FileNotFoundError:
            if variable[:-5] in PASSWORD_SETTINGS:
                raise MigratorError(f"{what} does not exist; mount the Secret there or fix the path (without it "
                                    "the password would be the default)", USAGE)
            # An optional Secret that was not created: its mount is empty. Said, not fatal.
            self.note(f"note: {variable} ({where}) names {path}, which does not exist: {variable[:-5]} is unset")
            return None
        except OSError as exc:
            raise MigratorError(f"{what} cannot be read ({exc.strerror}); fix the path or its permissions", USAGE)
        if len(data) > MAX_SETTING_FILE:
            raise MigratorError(f"{what} is larger than {MAX_SETTING_FILE // 1024} KiB, not a setting; fix the path", USAGE)
        value = _text(data, what).rstrip("\r\n")  # nor are the final line breaks part of the value
        if not value:
            raise MigratorError(f"{what} is empty; put the value in it, or unset {variable}", USAGE)
        return value

    def note(self, text: str) -> None:
        """Something the commands should say once, with the first target resolved."""
        if text not in self._notes:
            self._notes.append(text)

    def take_notes(self) -> list[str]:
        """The notes not yet taken: each is shown once, with whichever target is resolved first."""
        new, self._taken = self._notes[self._taken:], len(self._notes)
        return new

    def describe_origin(self, origin: str) -> str:
        """An origin for `config`: a NAME_FILE's also names its file (the path, never the content)."""
        for where in LAYERS:
            name = origin.removesuffix(f" ({where})")
            if name != origin and name.endswith("_FILE") and self._layer(where).get(name):
                return f"{origin}: file {self._layer(where)[name]}"
        return origin

    def value(self, name: str) -> str | None:
        return self.get(name)[0]

    def secret_values(self) -> list[str]:
        """Every secret either layer holds, set directly or in a NAME_FILE's file (read quietly: a file that cannot be
        read is the setting's own error, when a command uses it), for masking whichever command runs."""
        found = []
        for where in LAYERS:
            for name, value in self._layer(where).items():
                base = name.removesuffix("_FILE")
                if not value or not SECRET_NAME.search(base):
                    continue
                if name == base:
                    found.append(value)
                elif os.path.isfile(value):
                    try:
                        found.append(self._read_file(name, value, where) or "")
                    except MigratorError:
                        pass
        return [value for value in found if value]

    def named_files(self) -> list[str]:
        """The paths every NAME_FILE of either layer names (whatever NAME is: an AWS credentials file too)."""
        return [v for where in LAYERS for k, v in self._layer(where).items() if k.endswith("_FILE") and v]


class NotRegularFile(Exception):
    """A path that names a folder, FIFO, socket or device: what it is, in words."""


def read_regular_file(path: str | Path, limit: int) -> bytes:
    """At most limit + 1 bytes of a regular file (more than `limit`: the caller's "too large"). Checked before
    opening, opened non-blocking and checked again on the open file (swapped since?): a FIFO would hang the open,
    a device (/dev/zero) never end. NotRegularFile when it is not one; OSError passes through."""
    if kind := source_files.not_regular(os.stat(path).st_mode):
        raise NotRegularFile(kind)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as file:
        if kind := source_files.not_regular(os.fstat(file.fileno()).st_mode):
            raise NotRegularFile(kind)
        return file.read(limit + 1)


def _text(data: bytes, what: str) -> str:
    """A setting file's or .env's bytes as text: UTF-8 (an editor's BOM dropped); UTF-16 and NUL said so."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) > 1 and b"\0" in data[:2] and data.count(b"\0") * 3 >= len(data)):
        raise MigratorError(f"{what} is UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)", USAGE)
    if b"\0" in data:
        raise MigratorError(f"{what} holds a NUL byte, which no setting can carry; write the value alone, as UTF-8 text", USAGE)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MigratorError(f"{what} is not UTF-8 text; save it as UTF-8", USAGE)


def read_dotenv(path: Path) -> tuple[dict[str, str | None], dict[str, int]]:
    """`.env`'s settings, and the names set on lines python-dotenv cannot parse (with their line).

    No ${VAR} expansion: it would let a `.env` put a value of the real environment (PGPASSWORD, a token)
    into a URL of its own."""
    from dotenv.parser import parse_stream

    where = str(path.resolve())
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_DOTENV + 1)
    except OSError as exc:
        raise MigratorError(f"{where} cannot be read ({exc.strerror}); fix its permissions or remove it", USAGE)
    if len(data) > MAX_DOTENV:
        raise MigratorError(f"{where} is larger than {MAX_DOTENV // 1024} KiB, not a settings file; remove it", USAGE)
    values: dict[str, str | None] = {}
    broken: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(_text(data, where))):
        if binding.error:
            named = _DOTENV_NAME.match(binding.original.string)
            if named:
                broken[named.group(1)] = binding.original.line
        elif binding.key is not None:
            values[binding.key] = binding.value
    return values, broken
