"""All printing goes through here, so that no password can leave the process.

Results go to stdout (pipeable: `plan` prints SQL a DBA can feed to psql, `--json` prints JSON);
notes and errors go to stderr.

Two formats (`--log-format` / LOG_FORMAT): `human` (the default) prints lines as they are; `json` prints
every line as one JSON object (an event), for log pipelines, on the same streams. `event()` is what the
commands call where something happens (a migration started, applied, failed; progress; a lock wait; a
patch); in the human format it prints nothing, the commands' own lines say it. Masking is the same in both.
"""

import contextvars
import json
import logging
import re
import shutil
import sys
import time
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Iterator
from urllib.parse import quote, quote_plus

import click

from migrator.sql_text import SqlText

# Passwords seen by the settings resolver (raw and URL-encoded forms).
_secrets: set[str] = set()
_passwords: set[str] = set()  # (password settings only: SECRETS_READ_TIMEOUT's value is a "secret" too)

# user:password@ in any URL-like text (postgresql://, mongodb+srv://, jdbc:postgresql://, ...). The runner
# refuses unencoded credentials, so a password here holds no "/" (which keeps https://h:8443/a@b intact).
# Linear in the text: a scheme is tried only where a run of scheme characters starts (its leading digits and
# +.- skipped), and no part gives characters back (possessive), so a 20 MB line of letters is one pass, not n².
_URL_PASSWORD = re.compile(r"(?<![a-zA-Z0-9+.-])(?P<lead>[0-9+.-]*+)"
                           r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*+://[^:/@\s\"'<>]*+):(?P<pw>[^\s/@\"'<>]++)@")
# password=... in libpq key/value DSNs and URL query strings (JDBC's ?password=), and the other options that
# carry a secret: libpq's sslpassword (and PostgreSQL 18's oauth_client_secret), pymongo's proxyPassword and
# tlsCertificateKey(File)Password; not must_change_password=.
SECRET_OPTIONS = ("password", "sslpassword", "oauth_client_secret", "proxypassword", "tlscertificatekeyfilepassword",
                  "tlscertificatekeypassword")
_DSN_PASSWORD = re.compile(rf"(?P<head>(?<![\w])(?:{'|'.join(SECRET_OPTIONS)})\s*=\s*)"
                           r"(?P<pw>'(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s&'\"]+)", re.IGNORECASE)
# MONGODB-AWS credentials in authMechanismProperties (AWS_SESSION_TOKEN:value, comma-separated).
_AWS_TOKEN = re.compile(r"(?P<head>AWS_SESSION_TOKEN\s*(?::|%3A)\s*)(?P<pw>[^\s&,'\"]+)", re.IGNORECASE)
# A password quoted in free text is replaced only where it stands alone, so a password "postgres" leaves
# postgres_fdw, postgresql:// and migrator/postgres.py readable. Shorter ones are not replaced in free text
# at all (a password "p" would eat every p); inside URLs and DSNs every registered password is hidden.
_EDGE = r"\w./\\-"
MIN_FREE_TEXT_SECRET = 4
# A longer one that is not a word (digits, mixed case, punctuation) is replaced wherever it appears: next to a
# full stop, a slash or a dash ("/run/secrets/<pw>", "<pw>.bak") it is still the password.
MIN_ANYWHERE_SECRET = 8
_WORD = re.compile(r"[a-z_]+|[A-Z_]+")
# Where a server quotes a name, not a password: 'password authentication failed for user "app"' keeps the
# user's name even when the password is the same word (the name is shown everywhere else anyway).
_NAME_POSITION = r'(?<!user ")(?<!role ")'


def register_secret(value: str | None) -> None:
    """Remember a password (and its URL-encoded forms), so that no text shows it."""
    if value:
        _secrets.update({value, quote(value, safe=""), quote_plus(value)})


def register_password(value: str | None) -> None:
    """A password setting's value: masked, and never quoted back by an error (unquoted_secrets)."""
    register_secret(value)
    if value:
        _passwords.add(value)


def forget_secrets() -> None:
    _secrets.clear()
    _passwords.clear()


def mask_known(text: str) -> str:
    """The registered passwords inside URLs and DSNs, and nothing else."""
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
    text = _URL_PASSWORD.sub(lambda m: m.group(0) if m.group("pw") == "***" else f"{m.group('lead')}{m.group('head')}:***@",
                             text)
    text = _AWS_TOKEN.sub(lambda m: f"{m.group('head')}***", text)
    return _DSN_PASSWORD.sub(lambda m: m.group(0) if m.group("pw").strip("'\"") == "***" else f"{m.group('head')}***", text)


def scrub(text: str) -> str:
    """`mask`, and every registered password standing alone anywhere, a long one wherever it is: for text from
    outside the runner (server messages, a patch's output and errors), where a password could be quoted on its own."""
    text = mask(text)
    for secret in sorted(_secrets, key=len, reverse=True):
        if len(secret) >= MIN_FREE_TEXT_SECRET and secret in text:
            edge = "" if len(secret) >= MIN_ANYWHERE_SECRET and not _WORD.fullmatch(secret) else f"[{_EDGE}]"
            before, after = (f"(?<!{edge})", f"(?!{edge})") if edge else ("", "")
            text = re.sub(rf"{before}{_NAME_POSITION}{re.escape(secret)}{after}", "***", text)
    return text


def one_line(text: str) -> str:
    """Outside text folded onto one line (an error is one line)."""
    return " ".join(text.split())


# Line breaks (\n, \r, and those Unicode adds), the characters a terminal acts on, and the invisible ones that
# reorder or hide what is shown (bidi controls, zero-width characters): a name can then not read as another.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u061c\u200b-\u200f\u202a-\u202e"
                      "\u2066-\u2069\ufeff]")
# On a terminal a file's SQL keeps its tabs and line ends (CRLF too); its other controls are escaped as visible()'s.
_TERMINAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069]|\r(?!\n)")


def visible(text: str) -> str:
    """Outside text (a path, an object's name, a patch's comment) on one line, each line break or control
    character written as its escape (\\n, \\x1b): it can neither end plan's `--` comment nor forge a line."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


def quoted(text: str) -> str:
    """A name another party chose (a session's application_name) in single quotes, every character outside
    printable ASCII escaped (\\n, \\u0430): it can neither forge a line, nor end its quotes, nor pass for a name
    spelled with look-alike letters."""
    return "'" + "".join("\\'" if c == "'" else c if " " <= c <= "~" and c != "\\" else ascii(c)[1:-1]
                         for c in text) + "'"


def role(name: str | None) -> str:
    """A role's name (anyone with CREATEROLE chooses it): bare when a plain identifier, else quoted()."""
    return "unknown" if not name else name if name.isidentifier() and name.isascii() else quoted(name)


def _shown(text: str) -> str:
    """A patch's output as it reaches a terminal or log: its lines kept, any other control character (an escape
    sequence, a \\r that would overwrite the line with a fake "applied") written as its escape."""
    return "\n".join(visible(line) for line in text.split("\n"))


def _indented(text: str) -> str:
    """Human output: a message's own line breaks become indented continuation lines and control characters
    escapes, so outside text in it (a server's message) cannot print a line that looks like the runner's."""
    return "\n  ".join(visible(line) for line in re.split(r"\r\n|[\n\r\u2028\u2029]", text))


# --- formats -----------------------------------------------------------------------------------------

FORMATS = ("human", "json")
_format = "human"


def set_format(name: str) -> None:
    global _format
    if name not in FORMATS:
        raise ValueError(name)
    _format = name
    _route_library_output(name == "json")


# A library's Python warning (pymongo's "You appear to be connected to a DocumentDB cluster", urllib3's, boto3's) and a
# log record nobody handles (logging's last resort) print plain text: in the json format every line must be an
# event, so both become one ("warning", "log").
_plain_show_warning = warnings.showwarning
_plain_last_resort = logging.lastResort


def _warning_event(message, category, filename, lineno, file=None, line=None) -> None:
    _emit("warning", True, category=category.__name__, message=one_line(str(message)), where=f"{filename}:{lineno}")


class _LogEvents(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _emit("log", True, logger=record.name, level=record.levelname.lower(), message=one_line(record.getMessage()))


_log_events = _LogEvents(logging.WARNING)


def _route_library_output(as_json: bool) -> None:
    global _plain_show_warning
    if as_json and warnings.showwarning is not _warning_event:
        _plain_show_warning = warnings.showwarning
        warnings.showwarning = _warning_event
    elif not as_json and warnings.showwarning is _warning_event:
        warnings.showwarning = _plain_show_warning
    logging.lastResort = _log_events if as_json else _plain_last_resort


def json_format() -> bool:
    return _format == "json"


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _masked(value, how=None):
    """Every string inside a JSON-able value masked (SqlText, a migration file's SQL: as it is, see `sql`)."""
    if isinstance(value, SqlText):
        return str(value)
    if isinstance(value, str):
        return (how or mask)(value)
    if isinstance(value, dict):
        return {str(k): _masked(v, how) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_masked(v, how) for v in value]
    return value


# Fields every event carries in this context (a tenant schema's part: {"schema": name}); a thread copies
# it with contextvars.copy_context() to keep them.
_event_context: contextvars.ContextVar[dict] = contextvars.ContextVar("event_context", default={})


@contextmanager
def event_fields(**fields) -> Iterator[None]:
    """Every event emitted inside (by this thread, or one started with its context) carries `fields`."""
    token = _event_context.set({**_event_context.get(), **fields})
    try:
        yield
    finally:
        _event_context.reset(token)


def event_context() -> dict:
    """The fields every event here carries (a tenant schema's part: {"schema": name})."""
    return _event_context.get()


def event_json(event_name: str, how=None, **fields) -> str:
    """One event as a JSON line (masked): its time, its name, the context's fields, `fields`."""
    record = {"ts": _now(), "event": event_name, **_event_context.get(), **fields}
    return json.dumps(_masked(record, how), default=str, separators=(",", ":"))


def _emit(event_name: str, err: bool, how=None, **fields) -> None:
    click.echo(event_json(event_name, how, **fields), file=_stream(err))


def _stream(err: bool):
    """Where the runner's own lines go: the real stream, never a patch's redirect (that is for its text)."""
    stream = sys.stderr if err else sys.stdout
    while isinstance(stream, _MaskingStream):
        stream = stream.replaced
    return stream


def event(kind: str, /, **fields) -> None:
    """Something happened (migration_started, migration_applied, progress, lock_wait, patch_applied...):
    one JSON object on stderr in the json format; nothing in the human format (the lines say it)."""
    if json_format():
        _emit(kind, True, **fields)


# --- lines ---------------------------------------------------------------------------------------------

def result(text: str = "") -> None:
    """A result line on stdout."""
    if json_format():
        return _emit("result", False, message=text)
    click.echo(mask(text), file=_stream(False))


def sql(text: str) -> None:
    """SQL on stdout for psql, its UTF-8 bytes as the files hold them, unmasked: psql must read what psql_reading
    checked (click.echo strips ANSI escapes on a pipe; in cp932 表 ends in a backslash byte). On a terminal
    control characters show as escapes: an ESC sequence could hide a line from the reviewer."""
    if json_format():
        return _emit("sql", False, sql=SqlText(text))
    stream = _stream(False)
    if stream.isatty():
        return click.echo(_TERMINAL.sub(lambda m: ascii(m.group())[1:-1], text), file=stream)
    stream.flush()
    stream.buffer.write(text.encode("utf-8", "surrogateescape") + b"\n")
    stream.buffer.flush()


def note(text: str) -> None:
    """A progress or context line on stderr."""
    if json_format():
        return _emit("note", True, message=text)
    click.echo(mask(_indented(text)), file=_stream(True))


_QUOTED = re.compile(r"'[^'\\]*'|\"[^\"\\]*\"")  # a value quoted back


def unquoted_secrets(text: str) -> str:
    """An error quotes a setting's value back (`port 'x' is not a number`): never one equal to a known password
    (a mis-keyed secret puts the password in DB_PORT)."""
    for secret in _passwords:
        text = text.replace(repr(secret), "'***'").replace(f'"{secret}"', '"***"')
    bare = {secret.strip() for secret in _passwords} - {""}  # (quoted back with the spaces around it too)
    return _QUOTED.sub(lambda m: m[0][0] + "***" + m[0][0] if m[0][1:-1].strip() in bare else m[0], text)


def error(text: str, **fields) -> None:
    """The error line, last; an `excerpt` (the file's line and a caret, as psql shows them) just above it."""
    text = unquoted_secrets(text)
    if json_format():
        return _emit("error", True, message=text, **fields)
    for line in fields.get("excerpt", ()):
        click.echo(mask(visible(line)), file=_stream(True))
    click.echo(mask(_indented(f"error: {text}")), file=_stream(True))


def traceback() -> None:
    """The current traceback (for -v), masked: as it is, or as one event."""
    text = traceback_text()
    if json_format():
        return _emit("traceback", True, how=lambda s: s, traceback=text)  # traceback_text masked it already
    click.echo(text, file=_stream(True))


def progress(text: str, live: bool = False, kind: str = "progress", **fields) -> None:
    """A line about a statement still running. On a terminal, with live=True, one line rewritten in place
    (progress_done() ends it); in a log, a timestamped line; in the json format, a `kind` event."""
    if json_format():
        return _emit(kind, True, message=text, **fields)
    if live and sys.stderr.isatty():
        width = max(20, shutil.get_terminal_size().columns - 1)
        return click.echo("\r\033[K" + mask(text)[:width], nl=False, file=_stream(True))
    click.echo(mask(f"{time.strftime('%H:%M:%S')} {text}"), file=_stream(True))


def progress_done() -> None:
    """End a live line (a terminal only: a log got whole lines)."""
    if not json_format() and sys.stderr.isatty():
        click.echo("\r\033[K", nl=False, file=_stream(True))


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

    def __init__(self, err: bool, replaces: str):
        self.stream = _stream(err)  # the real one, from before the redirect
        self.replaced = getattr(sys, replaces)  # what the runner's own lines keep using meanwhile
        self.err, self.pending = err, ""

    def write(self, text: str) -> int:
        if json_format():  # whole lines, each one event
            self.pending += text
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                self._event(line)
            return len(text)
        click.echo(_shown(scrub(text)), nl=False, file=self.stream)
        return len(text)

    def _event(self, line: str) -> None:
        record = {"ts": _now(), "event": "patch_output",
                  "stream": "stderr" if self.err else "stdout", "message": visible(scrub(line))}
        click.echo(json.dumps(record), file=self.stream)

    def flush(self) -> None:
        if json_format() and self.pending:
            self._event(self.pending)
            self.pending = ""
        self.stream.flush()


def patch_stream(err: bool) -> "_MaskingStream":
    """Where a patch's child process's output goes in the runner: scrubbed, and in the json format whole lines as
    patch_output events (flush() ends a partial line as its own event). Where patch_output() already routes a
    patch's print() (to stderr, for `plan`), there."""
    current = sys.stderr if err else sys.stdout
    return current if isinstance(current, _MaskingStream) else _MaskingStream(err, "stderr" if err else "stdout")


@contextmanager
def patch_output(err: bool = False) -> Iterator[None]:
    """Route a Python patch's print() through the masking, to stdout (or stderr); a last line without
    a newline is printed when the redirect ends."""
    stream = _MaskingStream(err, "stdout")
    try:
        with redirect_stdout(stream):
            yield
    finally:
        stream.flush()


@contextmanager
def patch_stderr() -> Iterator[None]:
    """Route what a Python patch writes to sys.stderr through the masking, to stderr (flushed at the end)."""
    stream = _MaskingStream(True, "stderr")
    try:
        with redirect_stderr(stream):
            yield
    finally:
        stream.flush()


def report(report, as_json: bool = False) -> None:
    """A command's report on stdout: its text lines, or its to_json() as JSON. SQL for psql (reports.SqlText)
    is printed as it is; everything else is masked."""
    if json_format():  # one event: the report's JSON when it has one, else its lines
        data = report.to_json() if hasattr(report, "to_json") else None
        if data is not None:
            return _emit("report", False, kind=type(report).__name__, report=data)
        return _emit("report", False, kind=type(report).__name__, lines=list(report.lines()))
    if as_json:
        data = report.to_json()
        if _holds_sql(data, SqlText):  # each string masked but the SQL
            return click.echo(json.dumps(_masked(data), indent=2, default=str), file=_stream(False))
        return result(json.dumps(data, indent=2, default=str))
    for line in report.lines():
        (sql if isinstance(line, SqlText) else result)(line)


def _holds_sql(data, kind) -> bool:
    if isinstance(data, dict):
        return any(_holds_sql(v, kind) for v in data.values())
    if isinstance(data, list):
        return any(_holds_sql(v, kind) for v in data)
    return isinstance(data, kind)
