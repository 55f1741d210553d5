"""standard_conforming_strings and what a file says: a plain '...' literal holding a backslash reads one way with
the setting on (as the splitter, pglast and every judge before and during the run read it) and another with it off
(the backslash escapes the next character, a quote included): the server could then run statements no judge saw,
an ALTER COLUMN TYPE hidden inside what reads as one INSERT (attack24q 3). Such a statement is never sent while
the session has the setting off: refused before anything runs when the run's session has it off (a database's or a
role's setting, PGOPTIONS) or a pending file names it (SET, set_config, ALTER ROLE / DATABASE ... SET: the files
after it may run with it off), and, whatever turned it off unseen (a computed name, a DO block), just before the
statement is sent (the server reports the setting to the client at every change: no round trip).
"""

from __future__ import annotations

import re

from migrator import lazy_re
from migrator.errors import USAGE, MigratorError

NAME = "standard_conforming_strings"
_NAMES = lazy_re.compile(NAME, re.IGNORECASE)
_SOURCE = ("SELECT source, pg_catalog.quote_ident(current_user) FROM pg_catalog.pg_settings "
           f"WHERE name OPERATOR(pg_catalog.=) '{NAME}'")
_SOURCES = {"database": "the database's setting (ALTER DATABASE ... SET)",
            "user": "the role's setting (ALTER ROLE ... SET)",
            "database user": "the role's setting in this database (ALTER ROLE ... IN DATABASE ... SET)",
            "client": "the connection's options (PGOPTIONS, or options in the URL)",
            "configuration file": "the server's configuration file"}


def todo(role: str = "<role>") -> str:
    return (f"set it on for the migration role (`ALTER ROLE {role} SET {NAME} = on`, or RESET what turned it off), "
            "or write the backslash inside E'...' (doubled) or $$...$$, which read alike either way")


def off(connection) -> bool:
    """The session reads a backslash in a plain literal as an escape (as the server last reported it)."""
    return connection.info.parameter_status(NAME) == "off"


def _unread(why: str) -> str:
    return (f"a '...' literal holding a backslash reads otherwise while {NAME} is off ({why}): the server could run "
            "statements no check saw")


def refuse_before(connection, migrations, where: str) -> None:
    """Before anything runs: the first pending statement the server could read otherwise, refused (exit 2)."""
    found = pending_unread(connection, migrations)
    if found:
        raise MigratorError(f"{found}; refused before anything ran on {where}: nothing was applied", USAGE)


def pending_unread(connection, migrations) -> str | None:
    """The first pending statement the server could read otherwise, in words (`plan` warns of it), or None."""
    from pathlib import Path

    from migrator.postgres.splitter import backslash_literal, sets_conforming

    why, role = None, "<role>"
    if off(connection):
        with connection.cursor() as cursor:
            cursor.execute(_SOURCE)
            source, role = cursor.fetchone()
        why = f"this session has it off: {_SOURCES.get(source, source)}"
    for migration in migrations:
        path = Path(migration.path)
        own = None  # the file's own `SET standard_conforming_strings = off`, until it sets it on (its session's)
        for statement in migration.steps[0].statements:
            # (a statement is read whole before it runs: what it sets reaches only those after it)
            if (why or own) and backslash_literal(statement.text) is not None:
                return f"{path}:{statement.line}: {_unread(why or own)}; {todo(role)}"
            setting = sets_conforming(statement.text)
            if setting is not None:
                own = None if setting else f"{path}:{statement.line} turns it off"
            elif why is None and _NAMES.search(statement.text):
                why = f"{path}:{statement.line} may turn it off for what runs after"
    return _bodies_unread(connection, migrations)


def _bodies_unread(connection, migrations) -> str | None:
    """When a pending statement may turn it off (names it other than by SET ... on): the first routine body the server
    would then read otherwise (attack23z 4: a body is parsed when called, under the setting then in force, or its
    own SET clause) — one a pending statement makes or runs as a DO block, or one there already that the runner trusts
    as the user (body_lexing) — in words, or None."""
    from pathlib import Path

    from migrator import body_lexing
    from migrator.postgres.splitter import sets_conforming

    named = next((f"{Path(m.path)}:{s.line}" for m in migrations for s in m.steps[0].statements
                  if body_lexing.NAMES.search(s.text) and not sets_conforming(s.text)), None)
    if named is None:
        return None
    said = (f"{named} may turn {NAME} off, and then the server reads the body of {{}} otherwise than every check "
            "did (a backslash in a '...' literal): what it runs is unknown; leave the setting on, or write that "
            "backslash inside E'...' (doubled) or $$...$$, which read alike either way")
    for migration in migrations:
        for statement in migration.steps[0].statements:
            if "\\" in statement.text and any(map(body_lexing.reads_otherwise,
                                                   body_lexing.statement_bodies(statement.text))):
                where = f"{Path(migration.path)}:{statement.line}"
                return said.format("the routine or DO block it makes" if where == named else
                                   f"the routine or DO block at {where}")
    with connection.cursor() as cursor:
        cursor.execute(body_lexing.BACKSLASHED)
        unread = next((what for what, body in cursor.fetchall() if body_lexing.reads_otherwise(body)), None)
    return None if unread is None else said.format(unread)


class Unread(Exception):
    """A statement not sent: the session has standard_conforming_strings off and the statement reads otherwise.
    (`pgcode` None: running.py reports it as a statement's failure, saying what of the file committed.)"""

    pgcode = None
    exit_code = USAGE

    def __init__(self, by: str | None = None):
        super().__init__(f"{_unread('turned off by ' + (by or 'what ran before it'))}; it was not sent")
        self.todo = todo()


def unread(connection, text: str) -> bool:
    """The server would read `text` otherwise than the runner did (sending it would run what no check saw)."""
    from migrator.postgres.splitter import backslash_literal

    return off(connection) and backslash_literal(text) is not None


def check(connection, text: str, by: str | None = None) -> None:
    """Just before a statement is sent: refused when the server would read it otherwise than the runner did (`by`:
    what turned the setting off, in words)."""
    if unread(connection, text):
        raise Unread(by)


def readable(connection, text: str, **words) -> None:
    """Before a text of a file (its statement, a backfill's batch or the runner's query holding part of it) is sent
    on its session: refused unless the server reads it as every check did, its literals and its encoding
    (client_encoding.py). `words`: what changed the session (`by`) and what was not sent (`what`)."""
    from migrator.postgres import client_encoding

    check(connection, text, words.get("by"))
    client_encoding.check(connection, **words)
