"""client_encoding and what the server reads: psycopg2 encodes every statement in the encoding the session had at
connect and does not follow a file's own change of it. After `SET client_encoding TO 'SJIS'` (or BIG5, GBK...) the
server decodes the runner's text otherwise: a byte of a UTF-8 character takes the backslash or quote after it, so
`SELECT E'Á\\'; DROP TABLE t; --'` is one literal to every check and two statements to the server, and the runner's
own bookkeeping row after the file is stored garbled (attack23x 4, 4b). So a file that names the setting (SET,
SET NAMES, set_config, ALTER ROLE / DATABASE ... SET, EXECUTE of such a text) is refused before anything runs, and
one that changes it unseen (a computed name) is stopped before anything else is sent on its session: the server
reports the setting at every change (ParameterStatus), so the comparison needs no round trip.
"""

from __future__ import annotations

import re

from migrator import lazy_re
from migrator.errors import USAGE

NAME = "client_encoding"
_NAMED = lazy_re.compile(r"client_encoding|(?<![\w$])set(?:\s+(?:session|local))?\s+names(?![\w$])", re.IGNORECASE)
# pg_dump's header line: the encoding the runner reads files in, a no-op on a UTF8 session (else stopped as it runs)
_UTF8 = lazy_re.compile(r"set\s+(?:(?:session|local)\s+)?(?:client_encoding(?:\s*=\s*|\s+to\s+)|names\s+)"
                        r"'?(?:utf-?8|unicode)'?\s*;?\s*\Z", re.IGNORECASE)
REFUSED = (f"changes {NAME}: the runner sends the file's text (and its own bookkeeping after it) as it read it, so "
           "the server would read what follows in another encoding than every check did; remove the statement (a "
           "migration's text is UTF-8 whatever the session: psql -f reads it so with PGCLIENTENCODING=UTF8)")


def names(text: str) -> bool:
    """The statement may change client_encoding (SET client_encoding TO 'UTF8', pg_dump's, does not)."""
    return _NAMED.search(text) is not None and _UTF8.match(text) is None


def _clean(encoding: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", encoding or "").upper()  # (psycopg2 names them so: EUC_JP is EUCJP)


class Changed(Exception):
    """A statement not sent: what ran before it changed the session's client_encoding. (`pgcode` None: running.py
    reports it as a statement's failure, saying what of the file committed.)"""

    pgcode = None
    exit_code = USAGE

    def __init__(self, now: str, sent: str, by: str = "what ran before this statement",
                 what: str = "this statement"):
        super().__init__(f"the session's {NAME} is {now} ({by} changed it; the runner sends {sent}): the server "
                         f"would read {what} otherwise than every check did; it was not sent")
        self.todo = f"remove what sets {NAME} from the file (set_config, EXECUTE in a DO block)"


def after_file(connection, path, statements, transactional: bool, done: int, progress) -> None:
    """After a file's last statement, before the runner records it on the same session (4b). `progress`:
    errors.progress (what a non-transactional file committed, in words; passed in: errors imports the splitter)."""
    from migrator.errors import MigratorError

    try:
        check(connection, by="the file", what="the runner's record of it")
    except Changed as exc:
        what = ("nothing of it was applied: its transaction rolled back" if transactional else
                progress(statements, done, "it was not recorded as applied"))
        said = str(exc).removesuffix("it was not sent")
        raise MigratorError(f"{path}: {said}{what}; {exc.todo}", USAGE) from None


def check(connection, **words) -> None:
    """Before a statement is sent on a file's session: refused when the server decodes otherwise than the runner
    encodes (ParameterStatus: no round trip). `words`: Changed's `by` and `what`."""
    now = connection.info.parameter_status(NAME)
    if now is not None and _clean(now) != _clean(connection.encoding):
        raise Changed(now, connection.encoding, **words)
