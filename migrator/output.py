"""All printing goes through here, so that no password can leave the process.

Results go to stdout (pipeable: `plan` prints SQL a DBA can feed to psql, `--json` prints JSON);
notes and errors go to stderr.
"""

import re
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Iterator
from urllib.parse import quote, quote_plus

import click

# Passwords seen by the settings resolver (raw and URL-encoded forms).
_secrets: set[str] = set()

# user:password@ in any URL-like text (postgresql://, mongodb+srv://, jdbc:postgresql://, ...). The runner
# refuses unencoded credentials, so a password here holds no "/" (which keeps https://h:8443/a@b intact).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s\"'<>]*):(?P<pw>[^\s/@\"'<>]+)@")
# password=... in libpq key/value DSNs and URL query strings (JDBC's ?password=); not must_change_password=.
_DSN_PASSWORD = re.compile(r"(?P<head>(?<![\w])password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s&'\"]+)",
                           re.IGNORECASE)
# A password quoted in free text is replaced only where it stands alone, so a password "postgres" leaves
# postgres_fdw, postgresql:// and migrator/postgres.py readable. Shorter ones are not replaced in free text
# at all (a password "p" would eat every p); inside URLs and DSNs every registered password is hidden.
_EDGE = r"\w./\\-"
MIN_FREE_TEXT_SECRET = 4


def register_secret(value: str | None) -> None:
    """Remember a password (and its URL-encoded forms), so that no text shows it."""
    if value:
        _secrets.update({value, quote(value, safe=""), quote_plus(value)})


def forget_secrets() -> None:
    _secrets.clear()


def mask_known(text: str) -> str:
    """The registered passwords inside URLs and DSNs, and nothing else: for SQL that `plan` prints for psql."""
    for secret in sorted(_secrets, key=len, reverse=True):  # longest first: they may hold spaces
        if secret in text:
            escaped = re.escape(secret)
            text = re.sub(rf"(://[^:/@\s]*:){escaped}@", r"\1***@", text)
            text = re.sub(rf"((?<![\w])password\s*=\s*['\"]?){escaped}", r"\1***", text, flags=re.IGNORECASE)
    return text


def mask(text: str) -> str:
    """The one masking function for everything printed: passwords in URLs and DSNs, whatever their form.

    It changes nothing else: ids, file names and scheme names pass untouched, even when the password
    is an ordinary word such as "postgres".
    """
    text = mask_known(text)
    text = _URL_PASSWORD.sub(lambda m: m.group(0) if m.group("pw") == "***" else f"{m.group('head')}:***@", text)
    return _DSN_PASSWORD.sub(lambda m: m.group(0) if m.group("pw").strip("'\"") == "***" else f"{m.group('head')}***", text)


def scrub(text: str) -> str:
    """`mask`, and every registered password standing alone anywhere: for text from outside the runner
    (server messages, a patch's output and errors), where a password could be quoted on its own."""
    text = mask(text)
    for secret in sorted(_secrets, key=len, reverse=True):
        if len(secret) >= MIN_FREE_TEXT_SECRET and secret in text:
            text = re.sub(rf"(?<![{_EDGE}]){re.escape(secret)}(?![{_EDGE}])", "***", text)
    return text


def one_line(text: str) -> str:
    """Outside text folded onto one line (an error is one line)."""
    return " ".join(text.split())


def result(text: str = "") -> None:
    """A result line on stdout."""
    click.echo(mask(text))


def sql(text: str) -> None:
    """SQL on stdout, for psql: only a registered password inside a URL or DSN is hidden."""
    click.echo(mask_known(text))


def note(text: str) -> None:
    """A progress or context line on stderr."""
    click.echo(mask(text), err=True)


def error(text: str) -> None:
    click.echo(mask(f"error: {text}"), err=True)


def traceback_text() -> str:
    """The current traceback, causes first: stacks masked, each exception's own text scrubbed (it may
    quote a server), so module and file names stay readable."""
    import traceback

    exc, chain = sys.exc_info()[1], []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    parts = []
    for i, exc in enumerate(reversed(chain)):
        if i:
            parts.append("\nThe above exception was the direct cause of the following exception:\n\n"
                         if exc.__cause__ is not None else
                         "\nDuring handling of the above exception, another exception occurred:\n\n")
        stack = "".join(traceback.format_tb(exc.__traceback__))
        parts.append(mask("Traceback (most recent call last):\n" + stack))
        parts.append(scrub("".join(traceback.format_exception_only(type(exc), exc))))
    return "".join(parts)


class _MaskingStream:
    """What a patch prints, scrubbed on its way out (it is text from outside the runner)."""

    def __init__(self, err: bool):
        self.stream = sys.stderr if err else sys.stdout  # the real one, from before the redirect

    def write(self, text: str) -> int:
        click.echo(scrub(text), nl=False, file=self.stream)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def patch_output(err: bool = False) -> Iterator[None]:
    """Route a Python patch's print() through the masking, to stdout (or stderr)."""
    with redirect_stdout(_MaskingStream(err)):
        yield


@contextmanager
def patch_stderr() -> Iterator[None]:
    """Route what a Python patch writes to sys.stderr through the masking, to stderr."""
    with redirect_stderr(_MaskingStream(err=True)):
        yield


def report(report, as_json: bool = False) -> None:
    """A command's report on stdout: its text lines, or its to_json() as JSON. SQL for psql (reports.SqlText)
    is printed as it is but for registered passwords; everything else is masked."""
    import json

    from migrator.reports import SqlText

    if as_json:
        data = report.to_json()
        text = json.dumps(data, indent=2, default=str)
        (sql if _holds_sql(data, SqlText) else result)(text)
        return
    for line in report.lines():
        (sql if isinstance(line, SqlText) else result)(line)


def _holds_sql(data, kind) -> bool:
    if isinstance(data, dict):
        return any(_holds_sql(v, kind) for v in data.values())
    if isinstance(data, list):
        return any(_holds_sql(v, kind) for v in data)
    return isinstance(data, kind)
