"""What the planted check after run-time code (file_grants.Watch, fix23am) costs a non-transactional file.

    .venv/bin/python bench/file_grants_watch.py [DATABASE_URL]

Times may_run_code() over 20,000 statements of each shape (the text test every statement pays), and, given a
database URL (a superuser's), the planted check itself (trust.recheck's one query) that only a statement which may
run code pays.
"""

from __future__ import annotations

import re
import sys
import time

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from migrator.postgres.file_grants import may_run_code  # noqa: E402

N = 20_000
SHAPES = {
    "seed INSERT of constants": "INSERT INTO hcm_report_metadata (id, report_name, tenant_id) VALUES ({i}, 'r{i}', 't');",
    "UPDATE ... WHERE (no call)": "UPDATE hcm_report_metadata SET report_name = 'x' WHERE id = {i};",
    "INSERT calling now() (no parse)": "INSERT INTO hcm_report_metadata (id, created_at) VALUES ({i}, now());",
    "ALTER TABLE ADD COLUMN varchar(20) (parsed)": "ALTER TABLE t{i} ADD COLUMN c varchar(20);",
    "DO block (check follows)": "DO $$BEGIN EXECUTE 'SELECT {i}'; END$$;",
}


def main() -> None:
    for name, shape in SHAPES.items():
        texts = [shape.format(i=i) for i in range(N)]
        may_run_code(texts[0])  # (imports and compiles once)
        started = time.perf_counter()
        checked = sum(map(may_run_code, texts))
        took = time.perf_counter() - started
        print(f"{name}: {took:.3f} s per {N:,} ({took / N * 1e6:.1f} us each), {checked:,} followed by the check")
    if len(sys.argv) > 1:
        import psycopg2

        from migrator import trust
        from migrator.schema.queries import BOOKKEEPING_TABLES

        with psycopg2.connect(sys.argv[1]) as conn, conn.cursor() as cursor:
            sql = re.sub(r"(?<![:\w]):(s|tables|rights)\b", r"%(\1)s", trust._WITH_CREATORS.replace("%", "%%"))
            params = {"s": "public", "tables": list(BOOKKEEPING_TABLES), "rights": list(trust.RIGHTS)}
            cursor.execute(sql, params)
            started = time.perf_counter()
            for _ in range(200):
                cursor.execute(sql, params)
                cursor.fetchall()
            took = (time.perf_counter() - started) / 200
            print(f"the planted check (trust.recheck's query): {took * 1000:.2f} ms each; x {N:,} = {took * N:.1f} s")


if __name__ == "__main__":
    main()
