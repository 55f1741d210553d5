"""A PostgreSQL URL (libpq's or PgJDBC's) read once, the way libpq reads it, into a PostgresTarget.

libpq takes the connection fields from the URL proper (user:password@host:port/dbname) and from the
query (?host=/socket&port=5433&user=app&password=...); PgJDBC puts user and password in the query. Both
are read here as libpq does, folded into the target, so that `config`, every message and the connection
agree; a field given twice with different values is refused, named. A URL whose parts hold what belongs
to another part (`/db;password=x`, `?user=app?password=x`, `password%3Dx`) is a typo that would put a
password into a name that is printed: it is refused in one line that never shows the URL.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from migrator import output, urls
from migrator.errors import USAGE, MigratorError
from migrator.targets import PG_SCHEMES, PostgresTarget

JDBC_PREFIX = "jdbc:"
EXAMPLE = ("postgresql://user:password@host:5432/dbname or jdbc:postgresql://host:5432/dbname?user=u&password=p "
           "(URL-encode special characters)")
# libpq's connection fields that may stand in the URL proper and in its query.
FIELDS = ("host", "port", "dbname", "user", "password")
# libpq parameters that would swap the whole connection behind the runner's back (yoyo passes dsn= on).
REFUSED_PARAMS = ("dsn", "service", "servicefile")
# What separates a URL's parts: inside a name it is a mistyped separator, and what follows it (often a
# password) would be printed as part of that name.
_SEPARATORS = re.compile(r"[;&?=]")
_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PASSWORD_ASSIGNMENT = re.compile(r"password\s*=", re.IGNORECASE)
# A host setting: a name, an IPv4 or IPv6 address, or a socket folder; never a port, path or query.
HOST_SETTING = re.compile(r"^(?:/.*|[A-Za-z0-9._-]+|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.%A-Za-z]*)$")
_NOT_SHOWN = "the URL is not shown: it may hold a password"

# PgJDBC's parameters: what libpq spells differently, and what only the JVM driver uses (dropped, said so).
JDBC_RENAMED = {"applicationname": "application_name", "logintimeout": "connect_timeout",
                "connecttimeout": "connect_timeout", "tcpkeepalive": "keepalives"}
JDBC_ONLY = {"stringtype", "preparethreshold", "preparedstatementcachequeries", "preparedstatementcachesizemib",
             "sockettimeout", "sslfactory", "sslfactoryarg", "loglevel", "loggerlevel", "defaultrowfetchsize",
             "binarytransfer", "rewritebatchedinserts", "autosave", "cancelsignaltimeout", "readonly",
             "assumeminserverversion", "loadbalancehosts", "targetservertype", "sslpasswordcallback", "ssl"}


def read(url: str, origin: str) -> tuple[PostgresTarget, list[str]]:
    """The target a URL names, and the values of its currentSchema parameters (PgJDBC's), in order."""
    url = url.strip()
    jdbc = url.lower().startswith(JDBC_PREFIX)
    parsed = urls.parse(url[len(JDBC_PREFIX):] if jdbc else url, origin, "PostgreSQL", PG_SCHEMES, EXAMPLE)
    output.register_secret(parsed.password)
    for key, value in parsed.query:
        if key.lower() in output.SECRET_OPTIONS:  # password=, sslpassword=...
            output.register_secret(value)  # hidden even if what follows refuses the URL
    _refuse_misplaced(parsed, url.partition("?")[2], origin)
    if "," in parsed.netloc:
        raise MigratorError(f"{origin} names several hosts; the runner migrates one server: name one", USAGE)
    parts = urlsplit(f"postgresql://{parsed.netloc}")
    try:
        port = parts.port
    except ValueError:
        raise MigratorError(f"{origin}: the port is not a number from 1 to 65535; expected {EXAMPLE}", USAGE)
    host, raw_host = parts.hostname, parsed.netloc.rpartition("@")[2]
    if raw_host[:3].lower() == "%2f":  # libpq's spelling of a socket folder as the host: %2Frun%2Fpg (case kept)
        host = unquote(raw_host.rsplit(":", 1)[0] if port else raw_host)
    proper = {"host": host, "port": str(port) if port else None, "dbname": parsed.path or None,
              "user": parsed.user, "password": parsed.password}
    params, current = {}, []
    for key, value in parsed.query:
        if key.lower() == "currentschema":
            current.append(value)
        else:
            params[key] = value
    notes = jdbc_params(params, origin) if jdbc else _check_libpq_names(params, origin)
    for key in REFUSED_PARAMS:
        if key in params:
            raise MigratorError(f"{origin} sets {key}=, which would replace the connection the runner checks "
                                f"(host, TLS, timeouts); put those settings in the URL itself", USAGE)
    if "options" in params:
        _check_options(params["options"], origin)
    if "schema" in params:  # yoyo's own parameter: its history in one schema, the migrations in another
        raise MigratorError(f"{origin} sets schema=, which would split a schema's history from its migrations; "
                            "name the schema with --schema or SCHEMA_NAME instead", USAGE)
    fields = _fold(proper, params, origin)
    if not fields["dbname"]:
        raise MigratorError(f"{origin} names no database; expected {EXAMPLE}", USAGE)
    target = PostgresTarget(host=fields["host"], port=_port(fields["port"], origin), dbname=fields["dbname"],
                            user=fields["user"], password=fields["password"], params=params,
                            sources={"url": origin}, notes=notes)
    return target, current


# The runner appends its own -c settings (lock_timeout, statement_timeout, the idle bound, search_path) to the URL's
# options after a space; the server splits the whole as pg_split_opts does (at spaces, a backslash escaping the next
# character) and reads it as its command line. A final unpaired backslash escapes that space, a switch left without
# its value (-c) takes the runner's first -c as its value, `--` ends the switches: the runner's own settings then
# break the login with only the server's 'Try "postgres --help"'.
_SWITCH_WITH_VALUE = ("-B", "-C", "-c", "-D", "-d", "-f", "-h", "-k", "-N", "-p", "-r", "-S", "-t", "-v", "-W")


def _check_options(options: str, origin: str) -> None:
    words, word, escaped = [], "", False
    for char in options:
        if escaped or char not in "\\ \t\n\r\v\f":  # (the server's isspace: ASCII only)
            word, escaped = word + char, False
        elif char == "\\":
            escaped = True
        elif word:
            words, word = words + [word], ""
    words += [word] if word else []
    if escaped:
        why = ("ends in a backslash, which escapes the space before the runner's own -c settings (lock_timeout, "
               "statement_timeout); remove it, or write \\\\ for a backslash in a value")
    elif words and words[-1] in _SWITCH_WITH_VALUE:
        why = (f"ends in {words[-1]} without its value, which would take the runner's own -c settings as its value; "
               "complete it (-c name=value) or remove it")
    elif "--" in words:
        why = "holds --, which ends the server's switches: the runner's own -c settings would be refused; remove it"
    else:
        return
    raise MigratorError(f"{origin}: its options parameter {why}", USAGE)


def _refuse_misplaced(parsed: urls.Url, raw_query: str, origin: str) -> None:
    """A database name or user holding ; & ? =, a second ?, a query key that is no parameter name: typos."""
    held = "holds ;, &, ? or ="
    misplaced = ["the query holds a second ?"] if "?" in raw_query else []
    if parsed.path and _SEPARATORS.search(parsed.path):
        misplaced.append(f"the database name {held}")
    if parsed.user and _SEPARATORS.search(parsed.user):
        misplaced.append(f"the user name {held}")
    for key, value in parsed.query:
        if not _PARAMETER_NAME.match(key):
            misplaced.append(f"a query parameter's name {held}")
        elif key.lower() in ("user", "dbname", "host", "port") and _SEPARATORS.search(value):
            misplaced.append(f"?{key}= {held}")
        elif key.lower() != "password" and _PASSWORD_ASSIGNMENT.search(value):
            misplaced.append(f"the value of ?{key}= holds password=")
    if misplaced:
        raise MigratorError(f"{origin}: {misplaced[0]}, a mistyped separator: parameters follow one ? and are "
                            f"separated by & ({EXAMPLE}); {_NOT_SHOWN}; fix the setting", USAGE)


def _fold(proper: dict, params: dict[str, str], origin: str) -> dict:
    """The five connection fields, from the URL proper or its query (libpq's reading); both: refused."""
    fields = dict(proper)
    for key in FIELDS:
        if key not in params:
            continue
        value = params.pop(key)
        if proper[key] is not None and value != proper[key]:
            where = {"password": "after user: before the host", "user": "before the host", "dbname": "as the path",
                     "host": "after //", "port": "after the host"}[key]
            raise MigratorError(f"{origin} gives {key} twice, {where} and as ?{key}= in the query, with different "
                                f"values; keep one ({_NOT_SHOWN})", USAGE)
        fields[key] = value or None
    if fields["host"] and ("," in fields["host"] or not HOST_SETTING.match(fields["host"])):
        raise MigratorError(f"{origin}: ?host= is not one host name, IP address or socket folder (the runner "
                            f"migrates one server); {_NOT_SHOWN}", USAGE)
    return fields


def _port(value: str | None, origin: str) -> int | None:
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,5}", value) or not 0 < int(value) < 65536:
        raise MigratorError(f"{origin}: the port is not a number from 1 to 65535; expected {EXAMPLE}", USAGE)
    return int(value)


def _libpq_knows(key: str, value: str) -> bool:
    from psycopg2.extensions import make_dsn, parse_dsn

    try:
        parse_dsn(make_dsn(**{key: value}))
        return True
    except Exception:  # psycopg2.ProgrammingError: libpq does not know it
        return False


def _check_libpq_names(params: dict[str, str], origin: str) -> list[str]:
    """A libpq URL's query: every key must be a libpq parameter (an unknown one is refused, named)."""
    unknown = [key for key, value in params.items() if key not in FIELDS + REFUSED_PARAMS + ("schema",)
               and not _libpq_knows(key, value)]
    if unknown:
        raise MigratorError(f"{origin} sets {', '.join(unknown)}, which libpq does not know; remove it, or use "
                            "libpq's name (e.g. sslmode, application_name, connect_timeout)", USAGE)
    return []


def jdbc_params(params: dict[str, str], origin: str) -> list[str]:
    """Turn a JDBC URL's query into libpq's parameters in place; the notes say what was dropped.
    Refuses a parameter neither libpq nor the table above knows, naming it."""
    notes, unknown, dropped, ssl_on = [], [], [], False
    for key in list(params):
        value, lowered = params.pop(key), key.lower()
        if lowered == "ssl":
            if value.lower() in ("true", "1", "yes", "on", ""):
                params.setdefault("sslmode", "verify-full")  # PgJDBC's ssl=true verifies the server
                ssl_on = True
            dropped.append(key)
        elif lowered in JDBC_RENAMED:
            name = JDBC_RENAMED[lowered]
            params[name] = ("1" if value.lower() == "true" else "0") if name == "keepalives" else value
        elif lowered in JDBC_ONLY:
            dropped.append(key)  # the name only: a value (sslfactoryarg, a callback's) may be a secret
        elif key in FIELDS + REFUSED_PARAMS + ("schema",) or _libpq_knows(key, value):
            params[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise MigratorError(f"{origin} sets {', '.join(unknown)}, which neither libpq nor the runner's JDBC mapping "
                            "knows; remove it, or use libpq's name (e.g. sslmode, application_name, connect_timeout)",
                            USAGE)
    if dropped:
        notes.append(f"note: {origin}: JDBC-only parameter(s) {', '.join(dropped)} not used by libpq"
                     + ("; ssl=true is sslmode=verify-full" if ssl_on and params.get("sslmode") == "verify-full" else ""))
    return notes
