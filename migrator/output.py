"""All printing goes through here, so that no password can leave the process.

Results go to stdout (pipeable: `plan` prints SQL a DBA can feed to psql, `--json` prints JSON);
notes and errors go to stderr.
"""

import re
import sys
from contextlib import contextmanager, redirect_stdout
from typing import Iterator
from urllib.parse import quote, quote_plus

import click

# Passwords seen by the settings resolver; every printed line is scrubbed of them.
_secrets: set[str] = set()

# user:password@ in any URL-like text (postgresql://, mongodb+srv://, ...).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<pw>[^@\s]*)@")
# password=... in libpq key/value DSNs that drivers echo back in errors.
_DSN_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


# Shorter passwords are still masked inside URLs and DSNs; replacing them in free text would
# blank out ordinary words (a password "p" would eat every p).
MIN_FREE_TEXT_SECRET = 4


def register_secret(value: str | None) -> None:
    """Remember a password (and its URL-encoded forms) so that `mask` removes it anywhere."""
    if value and len(value) >= MIN_FREE_TEXT_SECRET:
        _secrets.update({value, quote(value, safe=""), quote_plus(value)})


def forget_secrets() -> None:
    _secrets.clear()


def mask(text: str) -> str:
    """The one masking function: URL passwords, DSN passwords and every registered secret."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:***@" if m.group("pw") else m.group(0), text)
    text = _DSN_PASSWORD.sub(r"\1***", text)
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def result(text: str = "") -> None:
    """A result line on stdout."""
    click.echo(mask(text))


def note(text: str) -> None:
    """A progress or context line on stderr."""
    click.echo(mask(text), err=True)


def error(text: str) -> None:
    click.echo(mask(f"error: {text}"), err=True)


def traceback_text() -> str:
    import traceback

    return mask(traceback.format_exc())


class _MaskingStream:
    """What a patch prints, masked on its way out."""

    def __init__(self, err: bool):
        self.stream = sys.stderr if err else sys.stdout  # the real one, from before the redirect

    def write(self, text: str) -> int:
        click.echo(mask(text), nl=False, file=self.stream)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def patch_output(err: bool = False) -> Iterator[None]:
    """Route a Python patch's print() through the masking, to stdout (or stderr)."""
    with redirect_stdout(_MaskingStream(err)):
        yield
