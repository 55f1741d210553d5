"""The SQL side against a real PostgreSQL: the seed's schema, psql parity, migrate, plan, rollback, mark, new."""

from pathlib import Path

from conftest import SEED_COLUMNS, SEED_INDEXES, add_migration, applied, one_error_line, psql_file, schema_dump, ok

def test_migrate_creates_exactly_the_seed_schema(cli, db):
    result = cli("migrate", env=db.db_env())
    assert result.exit_code == 0, result.output
    assert "applied 0001_create_hcm_report_metadata" in result.stdout

    columns = {r[0]: r[1:] for r in db.query(
        "SELECT column_name, data_type, character_maximum_length, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'hcm_report_metadata'")}
    assert columns == SEED_COLUMNS
    defaults = dict(db.query("SELECT column_name, column_default FROM information_schema.columns "
                             "WHERE table_name = 'hcm_report_metadata' AND column_default IS NOT NULL"))
    assert defaults["created_at"] == "now()"
    assert defaults["id"].startswith("nextval(")

    indexes = dict(db.query("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'hcm_report_metadata'"))
    for name, cols in SEED_INDEXES.items():
        assert indexes[name].endswith(f"USING btree {cols}"), indexes[name]
    assert set(indexes) == set(SEED_INDEXES) | {"hcm_report_metadata_pkey", "uk_hcm_report_filestore_id"}
    constraints = dict(db.query("SELECT conname, contype FROM pg_constraint WHERE conrelid = 'hcm_report_metadata'::regclass"))
    assert constraints["uk_hcm_report_filestore_id"] == "u"
    assert constraints["hcm_report_metadata_pkey"] == "p"

    assert db.query("SELECT obj_description('hcm_report_metadata'::regclass)")[0][0]
    comments = dict(db.query(
        "SELECT a.attname, col_description(a.attrelid, a.attnum) FROM pg_attribute a "
        "WHERE a.attrelid = 'hcm_report_metadata'::regclass AND a.attnum > 0 AND NOT a.attisdropped"))
    assert set(comments) == set(SEED_COLUMNS) and all(comments.values()), comments
    assert comments["dag_run_id"] == "Airflow DAG run ID"


def test_second_migrate_is_a_no_op(cli, db):
    assert cli("migrate", env=db.db_env()).exit_code == 0
    before = (schema_dump(db), db.query("SELECT * FROM _yoyo_migration"), db.query("SELECT count(*) FROM _yoyo_log"))
    result = cli("migrate", env=db.db_env())
    assert result.exit_code == 0
    assert "up to date (1 of 1 migrations applied)" in result.stdout
    assert "applied 0001" not in result.stdout
    assert (schema_dump(db), db.query("SELECT * FROM _yoyo_migration"), db.query("SELECT count(*) FROM _yoyo_log")) == before


def test_files_run_unchanged_with_psql_give_the_same_schema(cli, db, make_db, sql_dir):
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n",
                  "ALTER TABLE hcm_report_metadata DROP COLUMN status;\n")
    assert cli("migrate", "--sql-dir", sql_dir, env=db.db_env()).exit_code == 0
    by_psql = make_db()
    for path in sorted(p for p in sql_dir.glob("*.sql") if not p.name.endswith(".rollback.sql")):
        done = psql_file(by_psql, path)
        assert done.returncode == 0, done.stderr
    assert schema_dump(by_psql) == schema_dump(db)
    assert "hcm_report_metadata" in schema_dump(db)

    for path in sorted(sql_dir.glob("*.rollback.sql"), reverse=True):
        assert psql_file(by_psql, path).returncode == 0
    assert by_psql.tables() == set()


def test_rollback_to_zero_and_back(cli, db, sql_dir):
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n",
                  "ALTER TABLE hcm_report_metadata DROP COLUMN status;\n")
    add_migration(sql_dir, "0003_report_index", "CREATE INDEX idx_hcm_report_tenant ON hcm_report_metadata (tenant_id);\n",
                  "DROP INDEX idx_hcm_report_tenant;\n")
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    full = schema_dump(db)

    result = cli("sql", "rollback", "--sql-dir", sql_dir, env=env)  # default: the last one
    assert result.exit_code == 0, result.output
    assert "rolled back 0003_report_index" in result.stdout
    assert applied(db) == ["0001_create_hcm_report_metadata", "0002_add_status"]
    assert "idx_hcm_report_tenant" not in schema_dump(db)

    result = cli("sql", "rollback", "--all", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 0, result.output
    assert applied(db) == []
    log = db.query("SELECT migration_id, operation FROM _yoyo_log ORDER BY created_at_utc")
    assert [op for _, op in log].count("rollback") == 3 and [op for _, op in log].count("apply") == 3
    assert "hcm_report_metadata" not in db.tables()

    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    assert schema_dump(db) == full

    result = cli("sql", "rollback", "--to", "0001_create_hcm_report_metadata", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 0, result.output
    assert applied(db) == ["0001_create_hcm_report_metadata"]
    result = cli("sql", "rollback", "--count", "1", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 0, result.output
    assert applied(db) == []


def test_rollback_refuses_before_touching_anything_when_a_rollback_file_is_missing(cli, db, sql_dir):
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n")
    env = db.db_env()
    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    result = cli("sql", "rollback", "--all", "--sql-dir", sql_dir, env=env)
    line = one_error_line(result)
    assert "0002_add_status.rollback.sql not found" in line and "nothing was rolled back" in line
    assert len(applied(db)) == 2


def test_rollback_to_an_unknown_id_is_a_usage_error(cli, db):
    env = db.db_env()
    assert cli("migrate", env=env).exit_code == 0
    result = cli("sql", "rollback", "--to", "0099_nope", env=env)
    assert result.exit_code == 2
    assert "--to 0099_nope: no applied migration has that id" in one_error_line(result)
    assert applied(db) == ["0001_create_hcm_report_metadata"]


def test_plan_shows_pending_sql_and_writes_nothing(cli, db, sql_dir):
    env = db.db_env()
    result = cli("plan", "--sql-dir", sql_dir, env=env)
    assert result.exit_code == 0, result.output
    assert db.tables() == set()  # not even yoyo's own tables
    source = (sql_dir / "0001_create_hcm_report_metadata.sql").read_text().rstrip("\n")
    assert f"-- {sql_dir}/0001_create_hcm_report_metadata.sql\n\\connect -reuse-previous=on\nBEGIN;\n{source}\nCOMMIT;\n" in result.stdout

    assert cli("migrate", "--sql-dir", sql_dir, env=env).exit_code == 0
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n", "")
    before = (schema_dump(db), db.query("SELECT * FROM _yoyo_migration"), db.query("SELECT count(*) FROM _yoyo_log"),
              db.query("SELECT count(*) FROM yoyo_lock"))
    result = cli("plan", "--sql-dir", sql_dir, env=env)
    assert "1 pending migration(s)" in result.stdout
    assert "0002_add_status.sql" in result.stdout and "0001_create" not in result.stdout
    after = (schema_dump(db), db.query("SELECT * FROM _yoyo_migration"), db.query("SELECT count(*) FROM _yoyo_log"),
             db.query("SELECT count(*) FROM yoyo_lock"))
    assert after == before


def test_plan_output_is_runnable_sql(cli, db, make_db, tmp_path):
    from conftest import psql_file

    result = cli("plan", env=db.db_env())
    script = tmp_path / "plan.sql"
    script.write_text(result.stdout)
    by_plan = make_db()
    assert psql_file(by_plan, script).returncode == 0
    assert cli("migrate", env=db.db_env()).exit_code == 0
    assert schema_dump(by_plan) == schema_dump(db)


def test_plan_marks_non_transactional_migrations(cli, sql_dir):
    add_migration(sql_dir, "0002_concurrent_index",
                  "-- transactional: false\nCREATE INDEX CONCURRENTLY idx_t ON hcm_report_metadata (tenant_id);\n")
    result = cli("plan", "--offline", "--sql-dir", sql_dir)
    assert result.exit_code == 0, result.output
    block = result.stdout.split(f"\n-- {sql_dir}/0002_concurrent_index.sql")[1]
    assert block.startswith(" (not transactional)\n\\connect -reuse-previous=on\n-- transactional: false\nCREATE INDEX CONCURRENTLY")
    # linted as it will run (outside a transaction): squawk asks for IF NOT EXISTS, not for no CONCURRENTLY
    assert f"-- lint: {sql_dir}/0002_concurrent_index.sql:2:1: prefer-robust-stmts" in result.stdout
    assert "ban-concurrent-index-creation-in-transaction" not in result.stdout
    assert "BEGIN;" not in block
    assert "2 pending" in result.stdout  # offline: every migration


def test_plan_offline_needs_no_database(cli):
    result = cli("plan", "--offline", env={"DB_HOST": "127.0.0.1", "DB_PORT": "1"})
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE hcm_report_metadata" in result.stdout


def test_status_lists_applied_and_pending(cli, db, sql_dir):
    add_migration(sql_dir, "0002_add_status", "ALTER TABLE hcm_report_metadata ADD COLUMN status VARCHAR(20);\n", "")
    env = db.db_env()
    cli("migrate", "--sql-dir", sql_dir, env=env)
    (sql_dir / "0002_add_status.sql").unlink()
    (sql_dir / "0002_add_status.rollback.sql").unlink()  # a rollback left without its migration is refused
    add_migration(sql_dir, "0003_more", "SELECT 1;\n")
    text = cli("status", "--sql-dir", sql_dir, env=env)
    assert text.exit_code == 0
    lines = {line.split()[0]: line for line in text.stdout.splitlines() if line.startswith("  ")}
    assert "applied" in lines["0001_create_hcm_report_metadata"] and "UTC" in lines["0001_create_hcm_report_metadata"]
    assert "applied, file missing" in lines["0002_add_status"]
    assert lines["0003_more"].split()[1] == "pending"
    assert "2 applied, 1 pending" in text.stdout

    import json

    data = json.loads(cli("status", "--json", "--sql-dir", sql_dir, env=env).stdout)
    assert [(m["id"], m["status"]) for m in data["migrations"]] == [
        ("0001_create_hcm_report_metadata", "applied"), ("0003_more", "pending"), ("0002_add_status", "applied, file missing")]
    assert data["applied"] == 2 and data["pending"] == 1
    assert data["migrations"][0]["applied_at"]


def test_mark_adopts_an_existing_table(cli, db):
    seed = Path(__file__).parent.parent / "sql/0001_create_hcm_report_metadata.sql"
    assert psql_file(db, seed).returncode == 0  # the table as a DBA created it by hand
    env = db.db_env()
    result = cli("sql", "mark", "0001_create_hcm_report_metadata", env=env)
    assert result.exit_code == 0, result.output
    assert "marked applied: 0001_create_hcm_report_metadata" in result.stdout
    assert applied(db) == ["0001_create_hcm_report_metadata"]
    result = cli("migrate", env=env)
    assert result.exit_code == 0 and "up to date" in result.stdout
    again = cli("sql", "mark", "0001_create_hcm_report_metadata", env=env)
    assert "already applied: 0001_create_hcm_report_metadata" in again.stdout


def test_mark_unknown_id_fails_without_writing(cli, db):
    result = cli("sql", "mark", "0042_nope", env=db.db_env())
    assert result.exit_code == 2
    assert "unknown migration id 0042_nope" in one_error_line(result)
    assert db.tables() == set()


def test_new_creates_the_next_numbered_pair(cli, sql_dir):
    result = cli("sql", "new", "Add report status!", "--sql-dir", sql_dir)
    assert result.exit_code == 0, result.output
    created = sql_dir / "0002_add_report_status.sql"
    assert created.read_text().startswith("-- 0002_add_report_status\n")
    assert (sql_dir / "0002_add_report_status.rollback.sql").exists()
    # The rename is said in one line, before what was created.
    assert result.stdout.splitlines()[0] == ("note: name 'Add report status!' written as add_report_status "
                                             "(lower case, _ between words)")
    second = cli("sql", "new", "second", "--sql-dir", sql_dir)
    assert (sql_dir / "0003_second.sql").exists() and "note:" not in second.output  # a name kept as given: no note
    # An unfilled migration is refused rather than silently applied as nothing, and named as the template.
    line = one_error_line(cli("plan", "--offline", "--sql-dir", sql_dir))
    assert line.endswith("0002_add_report_status.sql is still the template `make new` wrote: add its SQL (and its "
                         "rollback's), or delete the pair (nothing was run)")


def test_status_names_a_pending_template_never_filled_in(cli, db, sql_dir):
    ok(cli("sql", "new", "add_note", "--sql-dir", sql_dir))
    ok(cli("sql", "new", "add_flag", "--sql-dir", sql_dir))
    (sql_dir / "0003_add_flag.sql").write_text("-- 0003_add_flag\nCREATE TABLE flag (id int);\n")
    result = cli("status", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split(None, 1)[1] for line in result.stdout.splitlines() if line.startswith("  00")}
    assert rows["0002_add_note"] == "pending, UNFILLED template" and rows["0003_add_flag"] == "pending"
    assert ("  unfilled templates block `migrate`: add the SQL of 0002_add_note (and their rollbacks'), or delete "
            "the pairs") in result.stdout.splitlines()
    # A file emptied of its SQL but not the template is an ordinary pending file for status (migrate says why).
    (sql_dir / "0002_add_note.sql").write_text("-- nothing yet\n")
    assert "UNFILLED" not in cli("status", "--sql-dir", sql_dir, env=db.db_env()).stdout


def test_an_unfilled_rollback_template_is_named_by_status_and_plan_and_json_keeps_pending(cli, db, sql_dir):
    """Attack 22: a filled migration whose rollback was left as the template was found only at the rollback."""
    import json

    ok(cli("sql", "new", "add_t", "--sql-dir", sql_dir))
    with (sql_dir / "0002_add_t.sql").open("a") as f:
        f.write("CREATE TABLE t (id int);\n")
    plan = ok(cli("plan", "--sql-dir", sql_dir, env=db.db_env()))
    assert (f"warning: {sql_dir / '0002_add_t.rollback.sql'} is still the template `make new` wrote: rolling it "
            "back would fail until its SQL is added") in plan.stderr
    ok(cli("sql", "new", "add_u", "--sql-dir", sql_dir))
    status = ok(cli("status", "--sql-dir", sql_dir, env=db.db_env())).stdout
    assert ("  unfilled rollback templates: 0002_add_t cannot be rolled back until their rollback's SQL is added"
            in status.splitlines())
    # JSON: the state stays "pending", the template a separate boolean.
    data = json.loads(ok(cli("status", "--json", "--sql-dir", sql_dir, env=db.db_env())).stdout)
    rows = {m["id"]: m for m in data["migrations"]}
    assert (rows["0003_add_u"]["status"], rows["0003_add_u"]["unfilled_template"]) == ("pending", True)
    assert (rows["0002_add_t"]["unfilled_template"], rows["0002_add_t"]["unfilled_rollback"]) == (False, True)


def test_new_rejects_a_name_without_letters(cli, sql_dir):
    result = cli("sql", "new", "!!!", "--sql-dir", sql_dir)
    assert result.exit_code == 2
    assert "has no letters or digits" in one_error_line(result)


def test_new_says_exactly_which_letters_a_file_name_cannot_hold(cli, sql_dir):
    """`añadir columna` became a_adir_columna with only "lower case, _ between words" said (attack 22)."""
    result = ok(cli("sql", "new", "añadir columna", "--sql-dir", sql_dir))
    assert result.stdout.splitlines()[0] == ("note: name 'añadir columna' written as a_adir_columna (lower case, _ "
                                             "between words; dropped ñ: a file name takes a-z, 0-9 and _)")
    assert (sql_dir / "0002_a_adir_columna.sql").exists()
    # A name of letters only of another script has letters: it is said which, not "no letters".
    line = one_error_line(cli("sql", "new", "добавь", "--sql-dir", sql_dir))
    assert "'добавь' holds only letters a file name cannot take (д о б а в ь: a-z, 0-9 and _ only)" in line
