"""Where credentials may travel: one source gives a connection whole, and a password goes only to a host
its own source named (issue 23: a `.env` naming another host must never receive the real environment's
password). settings.py resolves; this module says what was ignored and refuses what would cross.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from migrator import output
from migrator.env import MAX_DOTENV, Env, NotRegularFile, read_regular_file
from migrator.errors import USAGE, MigratorError
from migrator.targets import NO_PASSFILE, PostgresTarget


def note_ignored(env: Env, where: str | None, names: tuple[str, ...], store: str) -> None:
    """The connection settings of the source that lost, named (never their values)."""
    for other in env.layers:
        ignored = env.names(names, other) if where and other != where else []
        if ignored:
            env.note(f"note: {', '.join(ignored)} ({other}) ignored: the {where} names the {store} connection, "
                     f"and one source gives it whole (the real environment first); set it all in one place")


def _credential_source(origin: str | None) -> str | None:
    """Who chose a setting, for the rule that a password goes only where its own source points: the command
    line and the real environment are the invoker's own (one source), `.env` another, each secret its
    own; a default or libpq's own choice is no source's (None)."""
    if not origin or origin == "default" or origin.startswith("none"):
        return None
    if origin.startswith("--") or "(environment)" in origin:
        return INVOKER
    if "(.env)" in origin:
        return ".env"
    return origin  # secret NAME


INVOKER = "the command line and the environment"


def from_dotenv(target: PostgresTarget) -> bool:
    """Whether `.env` named the target's server (then its TLS settings may come from there too)."""
    return target.local_dev or _credential_source(target.sources.get("host") or target.sources.get("url")) == ".env"


def check_travel(target: PostgresTarget, env: Env, where: str | None) -> None:
    """The rules on where a password may go (README, "Connection settings")."""
    _check_credentials_travel(target, env)
    _refuse_hostless_password(target, env, where)
    _no_password_file(target)
    _no_unplain_password_file(target, env)
    _no_delegation(target)


def _no_delegation(target: PostgresTarget) -> None:
    """GSSAPI delegation forwards the invoker's Kerberos ticket-granting ticket to the server: never to a host `.env` or
    a secret named (as ~/.pgpass is not); libpq's PGGSSDELEGATION from the environment is turned off there too."""
    host_from = target.sources.get("host") or target.sources.get("url")
    if target.local_dev or _credential_source(host_from) in (None, INVOKER):
        return
    if target.params.get("gssdelegation", "0") != "0":
        raise MigratorError(f"{host_from} names gssdelegation={target.params['gssdelegation']}: it would forward your "
                            "Kerberos credentials to a host it chose; remove it (set the connection in the real "
                            "environment if that is meant)", USAGE)
    if os.environ.get("PGGSSDELEGATION", "0") != "0":
        target.params["gssdelegation"] = "0"


def _no_unplain_password_file(target: PostgresTarget, env: Env) -> None:
    """A password file that is no plain file, skipped by the runner (_passfile_passwords): libpq is pointed nowhere
    too. psycopg2's libpq would skip it with a raw 'WARNING: ... not a plain file' on stderr (a line outside the JSON
    log); the repro's psql hung opening the FIFO."""
    path = target.params.get("passfile") or env.environ.get("PGPASSFILE") or "~/.pgpass"
    try:
        mode = os.stat(Path(path).expanduser()).st_mode
    except (OSError, RuntimeError):  # none (the runner's NO_PASSFILE too), or unreadable: libpq passes over it
        return
    if not stat.S_ISREG(mode):
        target.params["passfile"] = NO_PASSFILE


def _no_password_file(target: PostgresTarget) -> None:
    """libpq's password file (~/.pgpass, PGPASSFILE) is the invoker's, a password from the environment: a host
    that `.env` or a secret named never gets it (a wildcard line, or the line of the host name while
    `hostaddr=` sends it elsewhere). Such a connection gets its password from its own source or none, and a
    `passfile=` in that source's URL is refused."""
    host_from = target.sources.get("host") or target.sources.get("url")
    if target.local_dev or _credential_source(host_from) in (None, INVOKER):
        return
    if "passfile" in target.params and target.params["passfile"] != NO_PASSFILE:
        raise MigratorError(f"{host_from} names passfile=, a password file of the invoker's, for a host it chose: "
                            "remove passfile from it; put the password beside the host in the same source", USAGE)
    target.params["passfile"] = NO_PASSFILE


def _refuse_hostless_password(target: PostgresTarget, env: Env, where: str | None) -> None:
    """A password whose source names no host would go to the default host, localhost, which is surely not what was
    meant (a local listener of anyone's would get it). Refused, naming the settings (never the values); the local
    development database (nothing configured) and an explicit DB_HOST=localhost are fine."""
    if target.sources.get("host") != "default" or target.sources.get("password") in (None, "default"):
        return
    hosts = [f"{name} ({other})" for other in env.layers if other != where
             for name in env.names(("DATABASE_URL", "DB_URL", "DB_HOST", "DB_SECRET_NAME"), other)] if where else []
    if hosts:
        raise MigratorError(f"{target.sources['password']} names a password but the {where} names no host, while "
                            f"{hosts[0]} names one: the connection comes whole from the {where} (the real environment "
                            f"first), so the password would go to localhost; set the host in the {where} too, or "
                            "move the password beside the host", USAGE)
    raise MigratorError(f"{target.sources['password']} names a password but no setting names the host: it would go to "
                        "localhost (the default); set DB_HOST beside it (DB_HOST=localhost for this machine) or "
                        "DATABASE_URL", USAGE)


def secret_passed_over(target: PostgresTarget, env: Env, ignored: tuple[str, str] | None) -> None:
    """A secret named (--secret-name, DB_SECRET_NAME in either source) but not read, because settings earlier in
    the order name the server: with no password beside them the seed's default password would go to their host,
    while the operator said where the real one is (attack23r #7). Refused in one line naming the settings; with
    a password of their own they are used, and the secret said to be ignored."""
    named = ([ignored[1]] if ignored else []) + [
        f"{name} ({layer})" for layer in env.layers for name in env.names(("DB_SECRET_NAME",), layer)]
    if named and not target.local_dev and target.sources.get("password") == "default":
        winners = [origin for key, origin in target.sources.items() if key != "password" and origin != "default"]
        raise MigratorError(f"{named[0]} names a secret, but it comes after {', '.join(dict.fromkeys(winners))} in "
                            "the settings order (options, DATABASE_URL, DB_HOST..., then a secret): the secret is not "
                            "read and no password is set beside them, so the seed's default password would go to "
                            f"{target.host}; set DB_PASSWORD (or DB_PASSWORD_FILE) beside them, or remove them to use "
                            "the secret", USAGE)
    if ignored:
        target.notes.append(f"note: secret {ignored[0]} ({ignored[1]}) ignored: a higher-priority setting wins")


def _check_credentials_travel(target: PostgresTarget, env: Env) -> None:
    """A password is sent only to a host its own source named; else one line refuses (attack 23 #3).
    PGPASSWORD counts: libpq sends it when the runner passes no password. A password from the real environment
    (DB_PASSWORD, PGPASSWORD alike) goes only to a host the environment names: not to one --db-host or
    --database-url names instead (attack23s 12: DB_PASSWORD went, PGPASSWORD was refused)."""
    if target.local_dev:
        return
    url = target.sources.get("url")
    host_from = target.sources.get("host") or url
    password_from = target.sources.get("password") or (url if target.password else None)
    if not target.password and env.environ.get("PGPASSWORD"):
        password_from = "PGPASSWORD (environment, read by libpq)"
    from_environment = bool(password_from) and "(environment" in password_from
    hostaddr = target.params.get("hostaddr")  # (where libpq really connects: never named by the environment)
    optioned = (host_from or "").startswith("--") and (env.environ.get("DB_HOST") != target.host or bool(hostaddr))
    if optioned and target.sources.get("password") == "default" and env.environ.get("PGPASSWORD"):
        password_from = "PGPASSWORD (environment)"  # (the seed's password would go instead: refused alike)
    if optioned and (from_environment or password_from == "PGPASSWORD (environment)"):
        instead = (f"set DB_HOST={target.host} in the environment instead of --db-host" if host_from == "--db-host"
                   else "put the password in --database-url")
        raise MigratorError(f"a password from the environment ({password_from}) goes only to a host the environment "
                            f"names, and host {target.host}{f' (hostaddr {hostaddr})' if hostaddr else ''} is named "
                            f"by {host_from} on the command line; {instead}",
                            USAGE)
    host, password = _credential_source(host_from), INVOKER if from_environment else _credential_source(password_from)
    if host and password and host != password:
        raise MigratorError(f"the password from {password_from} would be sent to the host named by {host_from}: a "
                            "password goes only to the host its own source names; set the host and the password in "
                            "the same place (both in the environment, both in .env, or one URL)", USAGE)


def _credential_family(origin: str) -> str:
    """The setting a credential came from, its user and password counted as one: DB_USER(_FILE) and
    DB_PASSWORD(_FILE) (and --db-user, documented to pair with DB_PASSWORD) are "DB", FLYWAY_* "FLYWAY"."""
    name = origin.split(" (")[0].removesuffix("_FILE")
    if name in ("DB_USER", "DB_PASSWORD", "--db-user"):
        return "DB"
    return "FLYWAY" if name.startswith("FLYWAY_") else name


def note_mixed(target: PostgresTarget) -> None:
    """A user and a password from different settings (DB_USER beside the chart's FLYWAY_PASSWORD) log in
    as one with the other's password: said, not refused (they may well belong together)."""
    if not (target.user and target.password):
        return
    user_from = target.sources.get("user") or target.sources.get("url")
    password_from = target.sources.get("password") or target.sources.get("url")
    if not user_from or not password_from or "default" in (user_from, password_from):
        return
    if _credential_family(user_from) != _credential_family(password_from):
        target.notes.append(f"note: user from {user_from}, password from {password_from}: different settings; "
                            "if the login fails, check that they belong together")


def register_passwords(env) -> None:
    """Every password setting's value, masked from the start: an error quoting another setting back (a mis-keyed
    secret puts the password in DB_PORT) never shows it (output.unquoted_secrets)."""
    for name in ("DB_PASSWORD", "FLYWAY_PASSWORD", "PGPASSWORD", "DATABASE_URL", "DB_URL", "MONGO_URL"):
        try:
            value = env.get(name)[0]
        except MigratorError:  # (an unreadable one is refused where it is used)
            continue
        for password in _url_passwords(value) if name.endswith("_URL") else [value]:
            output.register_password(password)
    path, origin = env.get("PGPASSFILE")
    for password in _passfile_passwords(env, path or "~/.pgpass", origin):
        output.register_password(password)


# libpq reads its password file at every connection; the runner only for masking, before any setting is parsed.
MAX_PASSFILE = MAX_DOTENV  # thousands of lines; /dev/zero or a log file is a mistake


def _passfile_passwords(env: Env, path: str, origin: str | None) -> list[str]:
    """The passwords of libpq's password file (host:port:db:user:password lines, \\ escaping : and \\). Like libpq,
    only a plain file: a FIFO would hang every command, /dev/zero fill the memory (said in a note, as psql warns)."""
    try:
        file = Path(path).expanduser()
    except RuntimeError:  # no HOME and no passwd entry (an arbitrary uid): libpq has no password file either
        return []
    where = f"{origin}: {file}" if origin else f"libpq's password file {file}"
    try:
        data = read_regular_file(file, MAX_PASSFILE)
    except NotRegularFile as exc:
        env.note(f"note: {where} is {exc}: skipped, as libpq skips it; point PGPASSFILE at a plain file, or remove it")
        return []
    except (OSError, ValueError):  # none (the usual case), or unreadable: libpq cannot use it either
        return []
    if len(data) > MAX_PASSFILE:
        env.note(f"note: {where} is larger than {MAX_PASSFILE >> 10} KiB, not a password file: not read by the "
                 "runner (a password of it would not be masked); fix PGPASSFILE")
        return []
    text = data.decode("utf-8", errors="replace")
    found = []
    for line in text.splitlines():
        fields, field, escaped = [], "", False
        for char in line:
            if not escaped and char == "\\":
                escaped = True
                continue
            if not escaped and char == ":" and len(fields) < 4:
                fields, field = fields + [field], ""
            else:
                field += char
            escaped = False
        if len(fields) == 4 and field and not line.startswith("#"):
            found.append(field)
    return found


def _url_passwords(url: str | None) -> list[str]:
    """A URL's passwords: user:password@ and every parameter that carries one (password= as JDBC writes it,
    libpq's sslpassword=, output.SECRET_OPTIONS); none from a malformed one."""
    from urllib.parse import parse_qs, unquote, urlsplit

    try:
        parts = urlsplit((url or "").removeprefix("jdbc:"))
        return ([unquote(parts.password)] if parts.password else []) + [
            value for key, values in parse_qs(parts.query).items() if key.lower() in output.SECRET_OPTIONS
            for value in values]
    except ValueError:
        return []


def refuse_fields_over_url(options: list[str], url: str | None, url_origin: str | None) -> None:
    """--db-host/--db-port/--db-name/--db-user with a DATABASE_URL (or DB_URL) in the settings' source: the URL named
    the server and its credentials, the options would silently replace it with the defaults and the seed's password
    (attack23s 8). Refused in one line rather than merged: which parts of a URL an option may change is a guess."""
    if options and url:
        raise MigratorError(f"{', '.join(options)} cannot be combined with {url_origin}, which names the server: give "
                            f"the whole URL with --database-url, or unset {url_origin.split(' ')[0]}", USAGE)
