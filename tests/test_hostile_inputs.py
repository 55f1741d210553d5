"""Issue 23, second security review: what a hostile or careless user can put in sql/ and mongo/, in a duration
option, in a `new` name, in ARGS; other sessions' query text; library warnings in the JSON log.

Where the point is process behaviour (a FIFO that would block, the image's command) the runner runs as a process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from conftest import PROJECT_ROOT, add_migration, ok, one_error_line
from test_progress import add, read_until, runner

SECRET = "sk_live_Hostile42"  # what another file or session must never leak


# --- 1. sql/ and mongo/ take regular files inside their folder only ----------------------------------------

def _mongo_patch(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "0001_fine.py").write_text("def run(db, dry_run):\n    pass\n")


def _plant(folder: Path, name: str, make: str, tmp_path: Path) -> Path:
    """An entry `name` in `folder` that is not a regular file inside it."""
    path = folder / name
    if make == "symlink_out":
        outside = tmp_path / "credentials"
        outside.write_text(f"SELECT '{SECRET}';\n")
        path.symlink_to(outside)
    elif make == "fifo":
        os.mkfifo(path)
    elif make == "directory":
        path.mkdir()
    elif make == "oversize":  # sparse: 65 MiB on paper, nothing on disk
        with path.open("wb") as file:
            file.truncate(65 << 20)
    return path


@pytest.mark.parametrize("make, why", [
    ("symlink_out", "is a symlink to "), ("fifo", "is a FIFO (named pipe), not a regular file"),
    ("directory", "is a directory, not a regular file"), ("oversize", "is 65.0 MiB, over the runner's limit of 64 MiB"),
])
@pytest.mark.parametrize("side", ["sql", "mongo"])
def test_a_migration_or_patch_that_is_not_a_regular_file_inside_its_folder_stops_the_command_unread(
        db, sql_dir, tmp_path, side, make, why):
    """A process, with a timeout: before the fix a FIFO blocked `plan` for ever and a symlink out was printed."""
    folder = sql_dir if side == "sql" else tmp_path / "mongo"
    if side == "mongo":
        _mongo_patch(folder)
    name = "0002_planted.sql" if side == "sql" else "0002_planted.py"
    _plant(folder, name, make, tmp_path)
    args = (["plan", "--sql-dir", sql_dir, "--database-url", db.url] if side == "sql" else
            ["mongo", "status", "--mongo-dir", folder])
    proc = runner(*args, env={"MONGO_URL": "mongodb://127.0.0.1:1/x"})
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, out + err
    assert SECRET not in out + err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"{folder / name} {why}" in line, line
    assert "Traceback" not in err
    if make == "symlink_out":
        assert f"outside {folder}" in line and "copy the file in, or remove the link" in line


def test_a_symlink_out_of_sql_that_is_refused_is_never_read(db, sql_dir, tmp_path, cli):
    """/dev/zero behind a migration's name: refused from stat alone (before, `plan` read it for ever)."""
    (sql_dir / "0002_zero.sql").symlink_to("/dev/zero")
    result = cli("plan", "--sql-dir", sql_dir, env=db.db_env())
    assert f"{sql_dir}/0002_zero.sql is a symlink to /dev/zero, outside {sql_dir}" in one_error_line(result)
    assert result.exit_code == 2


def test_a_symlink_to_a_file_inside_the_folder_is_taken_as_that_file(db, sql_dir, cli):
    (sql_dir / "shared").mkdir()
    (sql_dir / "shared" / "grants.sql").write_text("CREATE TABLE shared_one (id int);\n")
    (sql_dir / "0002_grants.sql").symlink_to("shared/grants.sql")  # relative, inside
    (sql_dir / "0002_grants.rollback.sql").write_text("DROP TABLE shared_one;\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    assert result.exit_code == 0, result.output
    assert "shared_one" in db.tables()


def test_a_patch_symlinked_to_a_file_outside_the_patch_folder_is_refused(cli, mongo, tmp_path):
    """The Mongo side refused FIFOs and devices already; a symlink out ran the file it pointed at."""
    folder = tmp_path / "mongo"
    _mongo_patch(folder)
    outside = tmp_path / "elsewhere.py"
    outside.write_text("def run(db, dry_run):\n    db.pwned.insert_one({'x': 1})\n")
    (folder / "0002_out.py").symlink_to(outside)
    result = cli("mongo", "apply", "--run", "--mongo-dir", folder, env=mongo.env)
    assert f"0002_out.py is a symlink to {outside}, outside {folder}" in one_error_line(result)
    assert result.exit_code == 2
    assert "pwned" not in mongo.db.list_collection_names()


def test_files_are_read_through_a_non_blocking_open_that_checks_again(tmp_path):
    """What stat saw may be replaced before the file is opened: the read itself refuses a FIFO without blocking."""
    from migrator import source_files
    from migrator.errors import MigratorError

    fifo = tmp_path / "0002_swap.sql"
    os.mkfifo(fifo)
    with pytest.raises(MigratorError, match="0002_swap.sql is not a regular file"):
        source_files.read_bytes(fifo)


@pytest.mark.parametrize("swap, why", [("symlink", "is a symlink to .*outside.sql, outside its folder"),
                                       ("hardlink", "is a hard link \\(2 names for one file\\)")])
def test_a_file_swapped_for_a_link_after_its_check_is_refused_by_the_read_itself(tmp_path, swap, why):
    """attack 23e (low): the read re-checked only S_ISREG on what it opened, following a symlink and taking a hard
    link swapped in after problem() passed. A link into the folder (which problem() accepts) is still read."""
    from migrator import source_files
    from migrator.errors import MigratorError

    folder = tmp_path / "sql"
    folder.mkdir()
    outside = tmp_path / "outside.sql"
    outside.write_text("SELECT 'not the folder''s';\n")
    path = folder / "0002_swap.sql"
    path.write_text("SELECT 1;\n")
    assert source_files.problem(path, folder) is None
    path.unlink()
    path.symlink_to(outside) if swap == "symlink" else os.link(outside, path)
    with pytest.raises(MigratorError, match=f"0002_swap.sql {why}"):
        source_files.read_bytes(path)
    (folder / "real.sql").write_text("SELECT 2;\n")
    (folder / "0003_link.sql").symlink_to(folder / "real.sql")
    assert source_files.read_bytes(folder / "0003_link.sql") == b"SELECT 2;\n"


@pytest.mark.parametrize("read", ["directives", "checksum", "targets"])
def test_every_read_after_the_folder_check_refuses_a_file_swapped_for_a_link_out(tmp_path, read):
    """attack 23f (low): the directives, the checksum and the targets a file's DDL names were read with open() /
    read_bytes, following a symlink swapped in after the folder check (and blocking on a FIFO). Now each goes
    through source_files.read_bytes (O_NOFOLLOW, one link, a size cap): refused in one line."""
    from migrator import checksums
    from migrator.errors import MigratorError
    from migrator.postgres import files
    from migrator.schema import targets

    folder = tmp_path / "sql"
    folder.mkdir()
    outside = tmp_path / "outside.sql"
    outside.write_text("-- transactional: false\nCREATE TABLE secret (id int);\n")
    path = folder / "0002_swap.sql"
    path.symlink_to(outside)
    reader = {"directives": files.read_directives, "checksum": checksums.file_sha256,
              "targets": lambda p: targets.named([p])}[read]
    with pytest.raises(MigratorError, match="0002_swap.sql is a symlink to .*outside.sql, outside its folder"):
        reader(path)
    fifo = folder / "0003_fifo.sql"
    os.mkfifo(fifo)
    with pytest.raises(MigratorError, match="0003_fifo.sql is not a regular file"):
        reader(fifo)
    path.unlink()
    path.write_text("-- transactional: false\nCREATE TABLE mine (id int);\n")  # the folder's own file: read
    assert reader(path) == {"directives": {"transactional": ("false", 1)}, "targets": {"mine"}}.get(read, reader(path))


@pytest.mark.parametrize("name, make, why", [
    ("V2__planted.sql", "symlink_out", "is a symlink to "), ("R__planted.sql", "fifo", "is a FIFO (named pipe), not a "
                                                            "regular file"),
    ("U1__init.sql", "fifo", "is a FIFO (named pipe), not a regular file")])
def test_a_flyway_file_that_is_not_a_regular_file_inside_its_folder_stops_the_command_unread(
        db, tmp_path, name, make, why):
    """A Flyway folder took its own path through the name check and skipped this one: a FIFO hung `plan`."""
    folder = tmp_path / "service"
    folder.mkdir()
    (folder / "V1__init.sql").write_text("CREATE TABLE init (id int);\n")
    _plant(folder, name, make, tmp_path)
    proc = runner("plan", "--sql-dir", folder, "--database-url", db.url)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, out + err
    assert SECRET not in out + err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"{folder / name} {why}" in line, line
    assert "Traceback" not in err


# --- 2. names: ASCII digits, nothing after .sql ---------------------------------------------------------

@pytest.mark.parametrize("name", ["\u0660\u0660\u0660\u0662_arabic.sql", "\uff10\uff10\uff10\uff12_wide.sql",
                                  "0002_newline.sql\n", "0002_blank.sql ", "0002_tab.sql\t"])
def test_a_migration_name_with_non_ascii_digits_or_a_trailing_blank_is_refused(db, sql_dir, cli, name):
    (sql_dir / name).write_text("CREATE TABLE sneaky (id int);\n")
    result = cli("migrate", "--sql-dir", sql_dir, env=db.db_env())
    line = one_error_line(result)
    assert result.exit_code == 2
    assert "not a valid migration file name" in line and "ASCII digits 0-9" in line, line
    assert "\n" not in line and "\t" not in line
    assert "sneaky" not in db.tables()


@pytest.mark.parametrize("name", ["V\u0662__arabic.sql", "V1.\u0662__arabic_part.sql", "V\uff12__wide.sql",
                                  "V2__newline.sql\n", "R__newline.sql\n"])
def test_a_flyway_name_with_non_ascii_digits_or_a_trailing_newline_is_refused(db, tmp_path, cli, name):
    folder = tmp_path / "service"
    folder.mkdir()
    (folder / "V1__init.sql").write_text("CREATE TABLE init (id int);\n")
    (folder / name).write_text("CREATE TABLE sneaky (id int);\n")
    result = cli("migrate", "--sql-dir", folder, env=db.db_env())
    line = one_error_line(result)
    assert result.exit_code == 2
    assert "not a valid Flyway migration file name" in line, line
    assert "\n" not in line
    assert "sneaky" not in db.tables()


# --- 3. other sessions' query text --------------------------------------------------------------------

def _blocked_run(db, sql_dir, log_format: str, *flags: str) -> tuple[list[str], int]:
    """A migration waiting behind a session whose last query quotes SECRET; its lines until the wait is named."""
    number = len(list(sql_dir.glob("*.rollback.sql"))) + 1
    add(sql_dir, f"{number:04d}_add_{log_format}", f"ALTER TABLE hcm_report_metadata ADD COLUMN c{number} text;\n")
    holder = psycopg2.connect(db.url, application_name="dba-console")
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM hcm_report_metadata")
            cur.execute(f"SELECT 'ALTER ROLE app PASSWORD ''{SECRET}''', {len(SECRET)} AS api_key")  # its last query
        proc = runner("--log-format", log_format, "migrate", "--sql-dir", sql_dir, "--database-url", db.url,
                      "--ddl-lock-timeout", "120s", *flags)
        lines = read_until(proc, lambda line: "pg_terminate_backend" in line or '"lock_wait"' in line, timeout=60)
        holder.rollback()
        out, err = proc.communicate(timeout=60)
    finally:
        holder.close()
    assert proc.returncode == 0, "".join(lines) + err
    return lines + out.splitlines() + err.splitlines(), pid


def test_a_blocking_sessions_query_is_never_printed_only_who_it_is_and_its_lock(cli, db, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--database-url", db.url))  # (setup: in-process)
    human, pid = _blocked_run(db, sql_dir, "human")
    line = next(line for line in human if "pg_terminate_backend" in line)
    assert f"pid {pid} (application_name 'dba-console" in line and "idle in transaction for" in line
    assert "holds ACCESS SHARE" in line, line
    assert SECRET not in "".join(human) and "ALTER ROLE" not in line and "api_key" not in line

    lines, pid = _blocked_run(db, sql_dir, "json")
    assert SECRET not in "".join(lines)
    event = next(json.loads(line) for line in lines if '"lock_wait"' in line)
    (held_by,) = event["held_by"]
    assert held_by["pid"] == pid and held_by["holds"] == ["ACCESS SHARE"] and held_by["user"]
    assert held_by["state"] == "idle in transaction" and held_by["transaction_for_s"] >= 0
    assert "query" not in held_by


def test_show_blocker_query_shows_the_query_without_its_literals(cli, db, sql_dir):
    ok(cli("migrate", "--sql-dir", sql_dir, "--database-url", db.url))  # (setup: in-process)
    lines, _ = _blocked_run(db, sql_dir, "json", "--show-blocker-query")
    assert SECRET not in "".join(lines)
    event = next(json.loads(line) for line in lines if '"lock_wait"' in line)
    assert event["held_by"][0]["query"] == "SELECT ?, ? AS api_key"
    assert "SELECT ?, ? AS api_key" in event["message"]


# Every way PostgreSQL spells a value, around a secret, in every context: the scrubbed text never holds it.
_LITERALS = ["'{s}'", "'it''s {s}'", "E'{s}'", "e'\\'{s}'", "E'\\\\' || '{s}'", "U&'{s}'", "u&'\\0041{s}'",
             "N'{s}'", "B'{s}'", "X'{s}'", "$${s}$$", "$tag${s}$tag$", "$a$ $b$ {s} $b$ $a$", "'a\\' , '{s}'",
             "/* {s} */", "-- {s}\n", "'{s}", "$q${s}", "E'{s}\\'", "/* {s}"]
_CONTEXTS = ["{v}", "SELECT {v}", "ALTER ROLE app PASSWORD {v}", "INSERT INTO t VALUES (1, {v}, 2)",
             "DO $body$ BEGIN PERFORM {v}; END $body$", "SELECT f({v})::text"]


@pytest.mark.parametrize("literal", _LITERALS)
def test_the_scrubber_leaves_no_literal_of_any_spelling(literal):
    from migrator.postgres.sessions import without_literals

    secret = "Zq7secretvalue"
    for context in _CONTEXTS:
        for padding in ("", " ", "\n"):
            query = context.format(v=padding + literal.format(s=secret) + padding)
            scrubbed = without_literals(query)
            assert secret not in scrubbed, (query, scrubbed)


def test_the_scrubber_keeps_what_the_statement_does_and_replaces_numbers():
    from migrator.postgres.sessions import without_literals

    assert without_literals("ALTER ROLE app PASSWORD 'x'") == "ALTER ROLE app PASSWORD ?"
    assert (without_literals('UPDATE "Accounts" t1 SET key = E\'k\\\'1\', n = 42.5e3 WHERE id = $1 AND h = 0xFF')
            == 'UPDATE "Accounts" t1 SET key = ?, n = ? WHERE id = $1 AND h = ?')
    assert without_literals("SELECT 1234567812345678 /* card */") == "SELECT ?  "


@pytest.mark.parametrize("query", [
    "SET app.key = {s}", "set local app.key to {s}", "SELECT 1; SET SESSION app.key TO {s}, other; SELECT 2",
    '/* c */ SET "app.key"={s}', "ALTER ROLE app SET app.key = {s}", "ALTER DATABASE d IN ROLE x SET app.key TO {s}",
    "ALTER SYSTEM SET app.key = {s}", "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.key = {s} AS $$x$$"])
def test_the_scrubber_leaves_no_bare_word_a_statement_sets_a_setting_to(query):
    """A setting's value may be a bare word, which the literal pass kept as a name (attack23e 5)."""
    from migrator.postgres.sessions import without_literals

    scrubbed = without_literals(query.format(s="sk_live_Zq7secret"))
    assert "sk_live" not in scrubbed and "app.key" in scrubbed, scrubbed
    # what sets no setting keeps its names: an UPDATE's SET names columns
    assert without_literals("UPDATE t1 SET key = other WHERE id = $1") == "UPDATE t1 SET key = other WHERE id = $1"
    assert without_literals("SET ROLE admin; RESET app.key") == "SET ROLE admin; RESET app.key"


# --- 4. durations: checked when parsed, within what PostgreSQL takes ----------------------------------------

@pytest.mark.parametrize("option, value", [
    ("--lock-timeout", "nan"), ("--lock-timeout", "-5"), ("--lock-timeout", "1e400"),
    ("--lock-timeout", "99999999999"), ("--lock-timeout", "inf"),
    ("--ddl-lock-timeout", "99999999999"), ("--ddl-lock-timeout", "2147483648ms"), ("--ddl-lock-timeout", "25d"),
    ("--statement-timeout", "1e400s"), ("--statement-timeout", "\u0665s"), ("--statement-timeout", "-1s"),
])
def test_a_duration_out_of_range_is_a_usage_error_at_parse_time(db, sql_dir, cli, option, value):
    result = cli("migrate", "--sql-dir", sql_dir, option, value, env=db.db_env())
    line = one_error_line(result)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in line and repr(value) in line, line
    assert not db.tables()  # nothing ran


@pytest.mark.parametrize("option, value", [("--mongo-timeout", "nan"), ("--mongo-timeout", "0"),
                                           ("--mongo-timeout", "1e400"), ("--patch-timeout", "nan"),
                                           ("--patch-timeout", "-1"), ("--patch-timeout", "99999999999")])
def test_mongo_durations_are_checked_too(cli, mongo, tmp_path, option, value):
    folder = tmp_path / "mongo"
    _mongo_patch(folder)
    result = cli("mongo", "apply", "--mongo-dir", folder, option, value, env=mongo.env)
    assert f"Invalid value for '{option}'" in one_error_line(result)
    assert result.exit_code == 2


def test_a_duration_variable_out_of_range_names_the_variable(db, sql_dir, cli):
    result = cli("migrate", "--sql-dir", sql_dir, env={**db.db_env(), "DB_LOCK_TIMEOUT": "99999999999s"})
    assert "DB_LOCK_TIMEOUT (environment): '99999999999s' is longer than PostgreSQL accepts" in one_error_line(result)
    result = cli("mongo", "status", "--mongo-dir", sql_dir, env={"MONGO_PATCH_TIMEOUT": "nan"})
    assert "MONGO_PATCH_TIMEOUT (environment): 'nan' is not a number of seconds" in one_error_line(result)


def test_the_longest_duration_postgresql_accepts_is_accepted_and_runs(db, sql_dir, cli):
    result = cli("migrate", "--sql-dir", sql_dir, "--ddl-lock-timeout", "2147483647ms", "--statement-timeout",
                 "24d", "--lock-timeout", "2147483", env=db.db_env())
    assert result.exit_code == 0, result.output
    assert "hcm_report_metadata" in db.tables()


# --- 5. a `new` name longer than a file name can be ----------------------------------------------------------

@pytest.mark.parametrize("side", ["sql", "mongo"])
def test_a_new_name_too_long_for_a_file_name_is_one_line_with_the_limit(cli, sql_dir, tmp_path, side):
    folder = sql_dir if side == "sql" else tmp_path / "mongo"
    if side == "mongo":
        _mongo_patch(folder)
    before = sorted(p.name for p in folder.iterdir())
    args = ("sql", "new", "x" * 300, "--sql-dir", folder) if side == "sql" else ("mongo", "new", "x" * 300,
                                                                                   "--mongo-dir", folder)
    line = one_error_line(cli(*args))
    suffix = ".rollback.sql" if side == "sql" else ".py"
    assert f"over the limit of 255 bytes for a file name; shorten the name to at most {255 - 5 - len(suffix)}" in line
    assert sorted(p.name for p in folder.iterdir()) == before
    # the longest that fits is written
    assert cli(*args[:2], "x" * (255 - 5 - len(suffix)), *args[3:]).exit_code == 0


# --- 6. library warnings in the JSON log ---------------------------------------------------------------------

def test_a_library_warning_is_a_json_event_in_the_json_log(tmp_path):
    """pymongo warns (Python warnings) when it is given a DocumentDB host: in the json format it is one event too."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LOG_FORMAT": "json", "MONGO_DB": "hcm",
           "MONGO_URL": "mongodb://app:Pw-Warn-77@cluster.docdb.amazonaws.com:27017/?tls=false"}
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "runner.py"), "mongo", "status", "--mongo-timeout", "0.3",
                           "--mongo-dir", str(PROJECT_ROOT / "mongo")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    lines = done.stdout.splitlines() + done.stderr.splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    warning = next(e for e in events if e["event"] == "warning")
    assert warning["category"] == "UserWarning" and "DocumentDB" in warning["message"]
    assert "Pw-Warn-77" not in done.stdout + done.stderr


def test_an_unhandled_library_log_record_is_a_json_event():
    """A library's log record nobody handles (logging's last resort, e.g. urllib3's pool warnings): an event."""
    code = ("import logging; from migrator import output; log = logging.getLogger('urllib3.connectionpool'); "
            "output.set_format('json'); log.warning('Connection pool is full, discarding connection: %s', 'h'); "
            "output.set_format('human'); log.warning('plain again')")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    first, second = done.stderr.splitlines()
    event = json.loads(first)
    assert event["event"] == "log" and event["logger"] == "urllib3.connectionpool" and event["level"] == "warning"
    assert event["message"] == "Connection pool is full, discarding connection: h"
    assert second == "plain again"  # the human format as before


# --- 7. the image: ARGS never reaches a shell; npm runs no install script ----------------------------------

def _image_command() -> list[str]:
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    command = json.loads(re.findall(r"^CMD (\[.*\])$", text, re.M)[-1])
    return [sys.executable if word == "python3" else word for word in command]


def test_the_images_default_command_splits_args_without_a_shell(db, sql_dir, tmp_path):
    marker = tmp_path / "pwned"
    spaced = tmp_path / "a folder" / "sql"
    spaced.parent.mkdir()
    sql_dir.rename(spaced)
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHON": sys.executable}
    for hostile in (f"$(touch {marker})", f"; touch {marker}", f"`touch {marker}`", f"| touch {marker}"):
        done = subprocess.run(_image_command(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                              env={**base, "ARGS": f"--sql-dir '{spaced}' --database-url {db.url} {hostile}"})
        assert not marker.exists(), hostile
        assert done.returncode == 2, done.stdout + done.stderr
        assert "unexpected extra argument" in done.stderr, done.stderr
    done = subprocess.run(_image_command(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          env={**base, "ARGS": f"--sql-dir '{spaced}' --database-url {db.url}"})
    assert done.returncode == 0, done.stdout + done.stderr  # quotes still group words, as in a shell
    assert "hcm_report_metadata" in db.tables()
    done = subprocess.run(_image_command(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                          env={**base, "ARGS": "--sql-dir 'unclosed"})
    assert done.returncode == 2 and done.stderr.startswith("error: ARGS \"--sql-dir 'unclosed\" cannot be split")


def test_npm_runs_no_install_script_in_the_image_or_make_mongosh():
    """mongosh works without them (tests/test_mongo_js.py runs it from `make mongosh`); they would build or
    download native add-ons the patches never use, a download outside the lockfile's hashes."""
    for name in ("Dockerfile", "Makefile"):
        calls = re.findall(r"^(?:\t|RUN )npm ci\b.*$", (PROJECT_ROOT / name).read_text(), re.M)  # what runs
        assert calls and all("--ignore-scripts" in call for call in calls), (name, calls)


@pytest.mark.parametrize("value", ["400us", "0.4"])
def test_a_lock_timeout_the_server_rounds_to_zero_is_refused(db, sql_dir, cli, value):
    # PostgreSQL rounds to whole milliseconds: 400us would be 0, i.e. wait forever
    result = cli("migrate", "--ddl-lock-timeout", value, "--sql-dir", sql_dir, env=db.db_env())
    line = one_error_line(result)
    assert f"--ddl-lock-timeout': '{value}' rounds to 0 ms on the server, which means no limit" in line, line
    assert result.exit_code == 2 and "hcm_report_metadata" not in db.tables()
