"""What the server made of a session the runner opened: the settings the run relies on, and who the session is.

The runner's limits travel in the startup packet's `options` (-c lock_timeout, statement_timeout, the idle bounds,
client_connection_check_interval, a tenant's search_path, the read-only default of plan and status). A connection
pooler between may drop them (PgBouncer's ignore_startup_parameters=options does), and the session then runs with
none of them, silently. So each session the run relies on (its own, each migration's) reads back, in one query on
connect that it sends anyway, what the server applied, and the run refuses where it differs. They are never SET
in-band instead: in a transaction-mode pool, a session's SET reaches other clients' transactions.

The same query reads the session's server pid and start (pg_backend_pid(), pg_stat_activity.backend_start): a
pooler hands its client a BackendKeyData pid of its own, which names no server session, or another one. The runner
cancels and ends its sessions by these (cancel.py), never by libpq's backend_pid.

A pool that forwards `options` (each server session then took them from its own startup packet: source 'client')
passes that read, yet may run each later transaction on another server session, one another client's run may hold
locks or pins on. So every statement taking or releasing a session-level lock, and every pin after the read, runs
only where pid and start are the read's (`here`, `guard`), and the run refuses otherwise (`elsewhere`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import datetime, timezone

from migrator import durations, output
from migrator.errors import USAGE, MigratorError
from migrator.targets import where_name

# The settings the runner sets and relies on; hcm.* ones (its own, read by its SQL) are checked too.
RELIED = ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout",
          "client_connection_check_interval", "default_transaction_read_only", "search_path")
# The runner's own settings (connection.py's pins, history.py's), set in-band on its sessions: never in a startup
# packet, so one of them set (not empty) on a session that has not set it yet is an earlier client's (a pool's reused
# server session). A refusal RESETs them on its own server session with the pins' search_path and role.
MARKS = ("hcm.flyway_table", "hcm.history", "hcm.tenant_schema", "hcm.tenant_schemas", "hcm.taken_over",
         "hcm.done")  # (hcm.done: every session's of a run, set by its first read: _CARRIED)
_DURATIONS = {"lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout",
              "client_connection_check_interval"}
# Schema-qualified calls and operators: a migration's session resolves names in the tenant's schema.
# The session's own row through the function, not the pg_stat_activity view (its joins: ~0.26 ms more a statement,
# and every guard() reads it).
_OWN_START = "(SELECT a.backend_start FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a)"
_WHO = f"pg_catalog.pg_backend_pid(), {_OWN_START}"
# The relied-on settings whose value is not the startup packet's (source 'client'): a role's or database's ALTER ...
# SET, the server's file, a pool's in-band SET. A value equal to the one sent proves nothing then: the pool may be
# one whose transactions each land on another server session.
_ELSEWHERE = ("(SELECT pg_catalog.string_agg(s.name OPERATOR(pg_catalog.||) '=' OPERATOR(pg_catalog.||) s.source, ',' "
              "ORDER BY s.name) FROM pg_catalog.pg_settings s "
              "WHERE s.name OPERATOR(pg_catalog.=) ANY (%s::pg_catalog.text[]) "
              "AND s.source OPERATOR(pg_catalog.<>) 'client')")


@dataclass(frozen=True)
class ServerSession:
    """A session as the server knows it: its pid, and when it started (a pid alone may be reused)."""

    pid: int
    started: datetime | None

    def ending(self) -> str:
        """The statement that ends this session, and no other."""
        started = f" AND backend_start = '{self.started.isoformat(sep=' ')}'" if self.started else ""
        return f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = {self.pid}{started}"


    def here(self) -> str:
        """An SQL condition true only on this server session (no parameter, no colon: yoyo's :name style)."""
        started = (f" AND pg_catalog.to_char({_OWN_START} AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISSUS') "
                   f"OPERATOR(pg_catalog.=) '{self.started.astimezone(timezone.utc):%Y%m%d%H%M%S%f}'"
                   if self.started else "")
        return f"(pg_catalog.pg_backend_pid() OPERATOR(pg_catalog.=) {self.pid}{started})"


# What a guard() statement fails with elsewhere (in its error's text): a statement sent with it then does nothing.
_ELSEWHERE_MARK = "hcm-db-migrations: another server session"


def here(connection) -> str:
    """of(connection).here()."""
    return of(connection).here()


def guard(connection) -> str:
    """A statement to send first, in the same query string, before statements that must run on `connection`'s own
    server session: it fails elsewhere (an error ends the whole string, undone), see is_elsewhere()."""
    return (f"SELECT CASE WHEN {here(connection)} THEN 0 ELSE CAST(pg_catalog.concat('{_ELSEWHERE_MARK} ', "
            "pg_catalog.pg_backend_pid()) AS pg_catalog.int4) END;\n")


def is_elsewhere(exc: BaseException) -> bool:
    """Whether `exc` is guard()'s failure."""
    return _ELSEWHERE_MARK in str(exc)


def elsewhere(connection, where: str | None = None) -> MigratorError:
    """The run's refusal when a statement reached another server session than its first; `connection` is closed
    (after letting go of its locks: see _refused)."""
    return MigratorError(
        f"PostgreSQL at {_refused(connection, where)}: each transaction reached another server session (a "
        "transaction-mode pool?): the statement that found it did nothing; connect to PostgreSQL directly or through "
        "a session-mode pool", USAGE)


def shared(connection, where: str | None = None) -> MigratorError:
    """The run's refusal when its own server session already holds the migration lock it was about to take: another
    client's run took it there (a pool sharing one server session; session locks are re-entrant, so the take would
    succeed and the holder's lock row read as a dead runner's). `connection` is closed."""
    return MigratorError(
        f"PostgreSQL at {_refused(connection, where)}: this run's server session already holds the migration lock, "
        "for another client (a transaction-mode pool shares one server session between clients): nothing was run; "
        "connect to PostgreSQL directly or through a session-mode pool", USAGE)


def carried(connection, where: str, migration: bool = True) -> MigratorError:
    """A new connection (a migration's, or the run's own) whose server session an earlier run set its own settings in
    (MARKS: a pool hands server sessions on as they are): the file would run with that run's search_path, the run
    would read its home schema from it. `connection` is closed."""
    which = "a migration's new connection" if migration else "this run's connection"
    preset = _preset(connection)
    if preset:
        return MigratorError(
            f"PostgreSQL at {_refused(connection, where)}: every new session there comes with the runner's own "
            f"setting(s) {', '.join(preset)} (they are set in-band by a run and mark its sessions, so a pool's next "
            "client refuses): nothing ran; the database's owner or the role runs the RESET shown", USAGE)
    return MigratorError(
        f"PostgreSQL at {_refused(connection, where)}: {which} reached a server session another client used before "
        "(an earlier run's own settings were SET in that session, as a pool that hands sessions on without resetting "
        f"them leaves them): nothing{' of the migration' if migration else ''} ran; connect to PostgreSQL directly or "
        "through a session-mode pool that resets sessions (DISCARD ALL)", USAGE)


# The runner's marks a new session gets from ALTER DATABASE / ROLE ... SET (pg_db_role_setting): not an earlier run's.
_PRESET = ("SELECT s.setdatabase OPERATOR(pg_catalog.<>) 0, r.rolname, pg_catalog.split_part(c, '=', 1) "
           "FROM pg_catalog.pg_db_role_setting s LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) "
           "s.setrole, pg_catalog.unnest(s.setconfig) c WHERE s.setdatabase OPERATOR(pg_catalog.=) ANY(ARRAY[0, "
           "(SELECT oid FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) "
           "pg_catalog.current_database())]::pg_catalog.oid[]) AND s.setrole OPERATOR(pg_catalog.=) ANY(ARRAY[0, "
           "(SELECT oid FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) session_user)]::pg_catalog.oid[])"
           " AND pg_catalog.split_part(c, '=', 1) OPERATOR(pg_catalog.=) ANY(%s) "
           "AND pg_catalog.split_part(c, '=', 2) OPERATOR(pg_catalog.<>) ''")


def _preset(connection) -> list[str]:
    """The runner's marks ALTER DATABASE / ROLE ... SET gives every new session, each with the RESET that ends it."""
    from psycopg2.extensions import quote_ident

    try:
        with connection.cursor() as cursor:
            cursor.execute(_PRESET, (list(MARKS),))
            rows = cursor.fetchall()
        database = quote_ident(connection.info.dbname, connection)
        return [output.visible(f"{name} (ALTER {_whose(role, in_database, database, connection)} RESET {name})")
                for in_database, role, name in rows]
    except Exception:  # (the refusal's own line stands without it)
        return []


def _whose(role: str | None, in_database: bool, database: str, connection) -> str:
    from psycopg2.extensions import quote_ident

    if role is None:
        return f"DATABASE {database}" if in_database else "ROLE ALL"
    return f"ROLE {quote_ident(role, connection)}" + (f" IN DATABASE {database}" if in_database else "")


# The session-level advisory locks each connection took and holds (on_own_session's takes): a refused run lets them
# go on its own server session before it leaves, never leaving them on a pooled session the pool keeps.
_holding: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # connection -> [key, ...] (a key once per take)
RELEASE_TRIES = 4  # guarded releases sent: each lands on whichever server session the pool hands on


def holds(connection, key: int, taken: bool) -> None:
    """Records session-level advisory lock `key` taken (True) or released (False) on `connection`'s own session."""
    keys = _holding.setdefault(connection, [])
    if taken:
        keys.append(key)
    elif key in keys:
        keys.remove(key)


def holding(connection, key: int) -> bool:
    return key in _holding.get(connection, ())


def taken(connection) -> list[int]:
    """The session-level advisory lock keys the run took on `connection` and holds (its own, not a file's)."""
    return list(_holding.get(connection, ()))


def holds_any(connection) -> bool:
    """Whether `connection`'s session holds a session-level advisory lock the run took (the migration lock)."""
    return bool(_holding.get(connection))


_rows: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # connection -> the DELETE of the lock row it wrote


def wrote_row(connection, delete: str | None) -> None:
    """Records the lock row `connection` wrote (the statement deleting it; None: deleted): a refusal deletes it on
    its own server session, else it would read as a live runner's while the pool keeps a session so named."""
    if delete:
        _rows[connection] = delete
    else:
        _rows.pop(connection, None)


_RESET = "".join(f"RESET {name};\n" for name in ("ROLE", "search_path", "synchronous_commit", *MARKS))


def leave(connection) -> None:
    """`connection` closed as a refusal leaves it (_refused): its locks let go and its pins RESET on its own server
    session first."""
    _refused(connection, None)


def _refused(connection, where: str | None) -> str:
    """Before a refusal: the session-level advisory locks `connection` took released, the lock row it wrote deleted,
    and the run's pins (search_path pg_catalog, its hcm.* marks) RESET, on its own server session only (guarded:
    elsewhere the statement does nothing, so it is sent again, a few times; a pool hands each transaction to an idle
    session), never leaving them for the pool's next client. Then `connection` is closed: nothing else is sent on
    it. Its `where`, in words."""
    import psycopg2
    import psycopg2.extensions as ext

    where = where or where_name(connection.info.host, connection.info.port, connection.info.dbname)
    keys, row = _holding.pop(connection, []), _rows.pop(connection, None)
    try:
        with connection.cursor() as cursor:
            # (a connection whose first read passed may hold pins; one refused by that read never set any)
            for _ in range(RELEASE_TRIES if (keys or connection in _known) and not connection.closed else 0):
                if connection.info.transaction_status != ext.TRANSACTION_STATUS_IDLE:
                    connection.rollback()  # (a transaction keeps its server session: the next try may reach another)
                try:
                    cursor.execute(guard(connection) + (f"{row};\n" if row else "") + _RESET
                                   + "SELECT pg_catalog.count(*) FROM pg_catalog.unnest(%s::pg_catalog.int8[]) k "
                                   "WHERE pg_catalog.pg_advisory_unlock(k)", (keys,))
                    break
                except psycopg2.DataError as exc:
                    if not is_elsewhere(exc):
                        raise
    except (psycopg2.Error, MigratorError):  # (a silent path's NoAnswer too)
        pass  # (the refusal is the line to say; the pool's session keeps them until it ends)
    connection.close()
    return where


READ_ONLY_SQLSTATE = "25006"  # read_only_sql_transaction


def read_only(where: str) -> MigratorError:
    """The run's one line when its session may not write: the server made it read-only."""
    return MigratorError(
        f"PostgreSQL at {where} runs this session read-only (a reader endpoint or hot standby, or "
        "default_transaction_read_only on for the role or database, or in the URL's options): nothing was written; "
        "connect to the writer (the primary), or turn that default off for the migration role", USAGE)


def asks_read_only(options: str) -> bool:
    """Whether libpq `options` turn default_transaction_read_only on."""
    value = wanted(options).get("default_transaction_read_only")
    return value is not None and _boolean(value) == "on"


_known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # connection -> its ServerSession


def wanted(options: str) -> dict[str, str]:
    """The relied-on settings `options` (libpq's: `-c name=value`, `--name=value`) asks for; a later one wins."""
    words = _words(options)
    settings: dict[str, str] = {}
    for before, word in zip([""] + words, words):
        if before == "-c":
            pair = word
        elif word.startswith(("--", "-c")):
            pair = word[2:]
        else:
            continue
        name, sep, value = pair.partition("=")
        name = name.strip().lower().replace("-", "_")
        if sep and (name in RELIED or name.startswith("hcm.")):
            settings[name] = value
    return settings


def _words(options: str) -> list[str]:
    """`options` split as the server splits it: at white space, a backslash taking the next character as it is."""
    words, word, escaped = [], None, False
    for char in options:
        if escaped or (char != "\\" and not char.isspace()):
            word, escaped = (word or "") + char, False
        elif char == "\\":
            escaped, word = True, word or ""
        elif word is not None:
            words.append(word)
            word = None
    return words + ([word] if word is not None else [])


def query(connection, settings: dict[str, str]) -> tuple[str, list]:
    """The select list (`, ...`) and its parameters reading the session's identity, whether an earlier client left
    the runner's own settings in it (_CARRIED), which of `settings` the server took from elsewhere than this
    connection's `options` (pg_settings.source; hcm.* are not listed there), and each as applied; appended to a
    query the session sends anyway; empty once `connection`'s are known."""
    if connection in _known:
        return "", []
    return (", " + ", ".join([_WHO, _CARRIED, _ELSEWHERE] + ["pg_catalog.current_setting(%s, true)"] * len(settings)),
            [list(settings), *settings])


# A new connection has SET nothing yet: one of the runner's own settings set in its server session is an earlier
# run's (its pins, left on a server session a pool hands on). Not search_path's source: a PostgreSQL 17 login event
# trigger may SET that in every new session, which a direct connection must pass. A session found clean is marked
# (hcm.done) in the same statement, after the check (CASE's order): whatever its file then leaves in it, a failed
# one's SET search_path included, a pool's next client of that server session refuses.
_CARRIED = ("CASE WHEN (SELECT pg_catalog.count(*) FROM pg_catalog.unnest(ARRAY[" + ", ".join(f"'{m}'" for m in MARKS)
            + "]::pg_catalog.text[]) m WHERE pg_catalog.current_setting(m, true) OPERATOR(pg_catalog.<>) '') "
            "OPERATOR(pg_catalog.>) 0 THEN true ELSE pg_catalog.set_config('hcm.done', 'on', false) IS NULL END")


# A plain run's migration sessions take the database's or role's search_path anew, each when it opens: the one the
# connect check held to the planted rule is the run's (checked, below). An owner's ALTER DATABASE (or ALTER ROLE)
# ... SET search_path mid-run would put a path nobody checked under the next file (attack23t 1b).
_CHECKED = ("hcm_checked_path", "hcm_migration")  # (yoyo URI arguments: popped before libpq sees them)


def checking(uri, creates_in: tuple, migration) -> object:
    """yoyo's `uri` for a plain run's migration session: carrying the search_path the run checked (creates_in's) and
    the migration's id, for first_read."""
    if not creates_in:  # (a tenant's path travels in `options`, which wins over the database's and role's: check())
        return uri
    return uri._replace(args={**uri.args, _CHECKED[0]: creates_in[1], _CHECKED[1]: migration or ""})


def checked(args: dict) -> tuple[str, str] | None:
    """checking()'s (path, migration), popped from a URI's `args`."""
    path, migration = (args.pop(name, None) for name in _CHECKED)
    return None if path is None else (path, migration)


def first_read(connection, settings: dict[str, str], where: str, checked: tuple[str, str] | None, cursor) -> str:
    """A migration session's first statement (failures.guard_session's): query() and check(), and its
    statement_timeout as shown; `checked`: (the search_path the run checked, the migration), refused if the
    session's differs."""
    select, names = query(connection, settings)
    cursor.execute(f"SELECT pg_catalog.current_setting('statement_timeout'), "
                   f"pg_catalog.current_setting('search_path'){select}", names)
    row = cursor.fetchone()
    check(connection, row[2:], settings, where)
    if checked and not _same("search_path", checked[0], row[1]):
        raise MigratorError(output.visible(
            f"PostgreSQL at {_refused(connection, where)}: the new session for {checked[1] or 'the next migration'} "
            f"starts with search_path {row[1]}, not {checked[0]}, the one this run checked for objects other roles "
            "planted (the database's or the migration role's setting changed mid-run: ALTER DATABASE or ALTER ROLE "
            f"... SET search_path): nothing of {checked[1] or 'it'} ran; see who changed it, then run again (the "
            "new path is then checked)"), USAGE)
    return row[0]


def check(connection, row, settings: dict[str, str], where: str, migration: bool = True) -> ServerSession:
    """The session's identity from `row` (query()'s columns), recorded for `connection`; refuses in one line where an
    earlier run's settings are in it (carried), or a setting differs from the one asked for. No columns: known
    already."""
    if not row:
        return _known[connection]
    pid, started, earlier, elsewhere, *shown = row
    if earlier:
        raise carried(connection, where, migration)
    differ = [f"{name} {_shown(value)} instead of {want}" for (name, want), value in zip(settings.items(), shown)
              if not _same(name, want, value)]
    if differ or elsewhere:
        connection.close()  # (nothing else is sent on it)
        what = (f"did not apply the session settings the runner sent in the connection's `options`: "
                f"{', '.join(differ)}" if differ else
                "took the session settings the runner relies on from elsewhere, not from this connection's "
                f"`options`: {', '.join(_from(pair) for pair in elsewhere.split(','))}")
        raise MigratorError(
            f"PostgreSQL at {where} {what} (a connection pooler between that drops `options`, e.g. PgBouncer with "
            "ignore_startup_parameters=options?): nothing was run on that session; connect to PostgreSQL directly, "
            "or through a session-mode pool that passes `options` to the server (setting the values on the role "
            "does not do: a transaction-mode pool runs each transaction on another server session)", USAGE)
    _known[connection] = ServerSession(pid, started)
    return _known[connection]


def known(connection) -> ServerSession | None:
    """`connection`'s session as read on it already (no statement sent: its path may be silent), else None."""
    return _known.get(connection)


def of(connection) -> ServerSession:
    """The server's own pid and start of `connection`'s session (read on it once if its connect did not: idle, and
    from the thread that uses it)."""
    if connection not in _known:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {_WHO}")
            _known[connection] = ServerSession(*cursor.fetchone())
    return _known[connection]


_SOURCES = {"user": "the role's settings (ALTER ROLE ... SET)", "database": "the database's settings (ALTER DATABASE "
            "... SET)", "database user": "the role's settings in this database (ALTER ROLE ... IN DATABASE ... SET)",
            "configuration file": "the server's configuration", "session": "a SET in the session (a pool's "
            "connect_query?)", "default": "the server's default"}


def _from(pair: str) -> str:
    """`name=source` (pg_settings.source) as said."""
    name, _, source = pair.partition("=")
    return f"{name} (from {_SOURCES.get(source, output.visible(source))})"


def _shown(value: str | None) -> str:
    return "unset" if value is None else "= " + output.visible(repr(value) if value == "" else value)


def _same(name: str, want: str, value: str | None) -> bool:
    if value is None:
        return False
    if name in _DURATIONS:
        try:
            return round(durations.pg_milliseconds(value)) == round(durations.pg_milliseconds(want))
        except ValueError:
            pass
    if name == "default_transaction_read_only":
        return _boolean(value) == _boolean(want)
    if name == "search_path":
        return [s.strip() for s in value.split(",")] == [s.strip() for s in want.split(",")]
    return value == want


def _boolean(value: str) -> str:
    return {"on": "on", "true": "on", "yes": "on", "1": "on", "off": "off", "false": "off", "no": "off",
            "0": "off"}.get(value.strip().lower(), value)
