"""A file's search_path, in every spelling, decides which table its unqualified names mean (attack24j reproSP,
reproLP): SET search_path / SET SCHEMA / set_config with a literal are followed, the whole list in order (schemas
that do not exist skipped, pending CREATE SCHEMA / TABLE counted); what may set it and cannot be read (a DO block,
set_config with a non-literal, a call of a function that sets it, an earlier file's ALTER DATABASE / ROLE) leaves it
unknown. Each verdict checked by migrate and plan on the real PostgreSQL, and the live table's file kept."""

from __future__ import annotations

import itertools

import pytest

from conftest import SEED, add_migration, applied, migrate, ok
from test_rewrites import SMALL, TABLE, seeded
from test_rewrites_pending import _write, refused_by_migrate_and_plan

NEW = f"CREATE TABLE {TABLE} (id int, tenant_id varchar(50));\n"
RETYPE_LIVE = f"ALTER TABLE public.{TABLE} ALTER COLUMN id TYPE bigint;\n"
RETYPED = f"ALTER COLUMN id TYPE bigint rewrites public.{TABLE} (~50 rows"
SETS_PATH = ("CREATE FUNCTION {}() RETURNS void LANGUAGE plpgsql AS "
             "$$BEGIN PERFORM set_config('search_path', 'arch', false); END$$")
_LIVE_FILE = "SELECT relfilenode FROM pg_class WHERE oid = 'public.{}'::regclass".format(TABLE)


def path_spellings():
    """`SET search_path = arch` as the server accepts it: the keyword's and the name's case, a quoted or U& name,
    SESSION / LOCAL, TO / =, comments and line breaks between the words, the value quoted or not; SET SCHEMA and a
    literal set_config."""
    sets = ("SET", "set", "Set")
    names = ("search_path", "SEARCH_PATH", '"search_path"', '"Search_Path"', 'U&"search_path"')
    scopes = ("", "SESSION ", "LOCAL ", "session ")
    tos = (" = ", " TO ", "=", "\n  to\n  ")
    gaps = (" ", "\n", " /* why */ ", " -- why\n ")
    values = ("arch", "ARCH", '"arch"', "'arch'", "arch, public", "nosuch, arch", '"$user", arch')
    for number, (s, n, scope, to, gap, value) in enumerate(itertools.product(sets, names, scopes, tos, gaps, values)):
        if number % 53 == 0:  # (a spread sample of the 6,720: each part's every choice appears)
            yield f"{s}{gap}{scope}{n}{to}{value}"
    for s, gap, value in itertools.product(("SET", "set"), (" ", "\n", " /* x */ "), ("'arch'", "'ARCH'")):
        yield f"{s}{gap}SCHEMA{gap}{value}"  # (SET SCHEMA takes a string: its case is kept, 'ARCH' names no schema)
    for call in ("set_config('search_path', 'arch', false)", "pg_catalog.set_config('SEARCH_PATH', 'arch, public', "
                 "true)", "set_config( 'search_path' ,'nosuch,ARCH', false)", "SET_CONFIG('search_path', '\"arch\"', "
                 "false)"):
        yield f"SELECT {call}"


# what may set the path and cannot be read: unknown from there on
UNREAD = {
    "do_block": "DO $$ BEGIN EXECUTE 'SET search_path = arch'; END $$",
    "do_set_schema": "DO $$BEGIN EXECUTE 'set schema ''arch'''; END$$",
    "set_config_expression": "SELECT set_config('search' || '_path', 'arch', false)",
    "set_config_column": "SELECT set_config(name, 'arch', false) FROM pg_settings WHERE name = 'search_path'",
    "set_config_in_where": "SELECT 1 WHERE set_config('search_path', 'arch', false) IS NOT NULL",
    "pending_function_call": SETS_PATH.format("setp2") + ";\nSELECT setp2()",
    "live_function_call": "SELECT setp()",
    "set_local_in_a_block": "-- transactional: false\nBEGIN;\nSET LOCAL search_path = arch",
}


def _arch(db) -> None:
    """The schema a file's path may name; made before the seed's migrate, which records it with the schema, so each
    later command finds the catalog as recorded (its fingerprint) instead of describing it anew (~0.1 s a command)."""
    db.query("CREATE SCHEMA arch")


def _live_file(db) -> int:
    return db.query(_LIVE_FILE)[0][0]


def _refused_keeping_the_table(cli, db, sql_dir, texts, line: int, what: str = RETYPED, plan: bool = True) -> None:
    before = _live_file(db)
    path = _write(sql_dir, texts)[-1]
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:{line}: {what}" in result.stderr, (texts, result.output)
    assert applied(db) == [SEED] and _live_file(db) == before
    if plan:
        shown = cli("plan", "--sql-dir", sql_dir, env={**db.db_env(), "REWRITE_THRESHOLD_ROWS": "10"})
        assert shown.exit_code == 0 and f"-- REFUSED by migrate: {path}:{line}: {what}" in shown.stdout, (texts,
                                                                                                         shown.output)
    for written in sql_dir.glob("000[2-9]_*"):
        written.unlink()


# A control file after each spelling's: the live table's rewrite, unqualified, refused in its own fresh session;
# were the spelling's path to reach it (arch, where the spelling's file created the table's name), it would be the
# new table's and pass.
CONTROL = f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"
BATCH = 32  # spellings a migrate judges at once (each file its own session and verdict): 5 commands, not ~130


def test_every_spelling_of_the_files_search_path_puts_the_new_table_in_its_schema_not_over_the_live_one(cli, db,
                                                                                                        sql_dir):
    """A CREATE TABLE of the live table's name after the file moved its path lands in arch: a rewrite of the live
    public table is still the live table's, refused, whatever the spelling of the move. Each spelling in a file of
    its own, several files a command (migrate names every refused file), a control file after each."""
    _arch(db)
    seeded(cli, db, sql_dir)
    spellings = list(path_spellings())
    assert len(spellings) > 120
    before = _live_file(db)
    for start in range(0, len(spellings), BATCH):
        texts = [text for spelling in spellings[start:start + BATCH] for text in (f"{spelling};\n{NEW}{RETYPE_LIVE}",
                                                                                    CONTROL)]
        refusals = [f"{path}:{text.count(chr(10))}: {RETYPED}" for path, text in zip(_write(sql_dir, texts), texts)]
        result = migrate(cli, db, sql_dir, *SMALL)
        assert result.exit_code == 2, (texts, result.output)
        assert f"{len(texts)} statement(s) would stop the application" in result.stderr, result.stderr
        missing = [(text, line) for text, line in zip(texts, refusals) if line not in result.stderr]
        assert not missing, (missing, result.output)
        assert applied(db) == [SEED] and _live_file(db) == before
        shown = cli("plan", "--sql-dir", sql_dir, env={**db.db_env(), "REWRITE_THRESHOLD_ROWS": "10"})
        missing = [(text, line) for text, line in zip(texts, refusals) if f"-- REFUSED by migrate: {line}" not in
                   shown.stdout]
        assert shown.exit_code == 0 and not missing, (missing, shown.output)
        for written in sql_dir.glob("0*_pending.sql"):
            written.unlink()


@pytest.mark.parametrize("case", list(UNREAD))
def test_a_search_path_the_judge_cannot_read_refuses_a_risky_statement_on_an_unqualified_name(cli, db, sql_dir, case):
    """The new table went who knows where: the live one named qualified is the live one; an unqualified name in a
    risky statement may mean the big table, and the refusal says why."""
    _arch(db)
    db.query(SETS_PATH.format("setp"))  # (a live function whose body sets search_path; before the seed, as _arch)
    seeded(cli, db, sql_dir)
    text = UNREAD[case] + ";\n"
    _refused_keeping_the_table(cli, db, sql_dir, [text + NEW + RETYPE_LIVE], text.count("\n") + 2)
    _refused_keeping_the_table(cli, db, sql_dir, [text + f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"],
                               text.count("\n") + 1)


def test_the_refusal_under_an_unknown_path_says_so_and_a_qualified_name_runs(cli, db, sql_dir):
    _arch(db)
    seeded(cli, db, sql_dir)
    path = add_migration(sql_dir, "0002_do", UNREAD["do_block"] + f";\nALTER TABLE {TABLE} ADD COLUMN u uuid "
                                                                  "DEFAULT gen_random_uuid();\n")
    result = migrate(cli, db, sql_dir, *SMALL)
    assert result.exit_code == 2 and f"{path}:2: ADD COLUMN u DEFAULT gen_random_uuid()" in result.stderr
    assert (f"(the unqualified name {TABLE} may mean this table: the file's search_path is unknown, set inside a "
            "statement the judge does not read") in result.stderr and "qualify the name)" in result.stderr
    add_migration(sql_dir, "0002_do", f"{UNREAD['do_block']};\nALTER TABLE public.{TABLE} ADD COLUMN u int "
                                      "DEFAULT 1;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))  # (named qualified, catalog only: nothing to refuse)


# the path changed back before the risky statement, or by an earlier file for the later files' sessions
BACK = {
    "reset": "RESET search_path", "set_default": "SET search_path TO DEFAULT", "reset_all": "RESET ALL",
    "set_config_back": "SELECT set_config('search_path', 'public', false)", "set_schema_back": "SET SCHEMA 'public'",
}


@pytest.mark.parametrize("case", list(BACK))
def test_a_path_set_back_resolves_the_unqualified_name_to_the_live_table_again(cli, db, sql_dir, case):
    _arch(db)
    seeded(cli, db, sql_dir)
    _refused_keeping_the_table(cli, db, sql_dir, [f"SET search_path = arch, public;\n{NEW}{BACK[case]};\n"
                                                  f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"], 4)


@pytest.mark.parametrize("local", ["SET LOCAL search_path = public", "SET LOCAL SCHEMA 'public'",
                                   "SELECT set_config('search_path', 'public', true)"])
def test_a_set_local_alone_in_a_non_transactional_file_leaves_the_files_path(cli, db, sql_dir, local):
    """A non-transactional file's SET LOCAL (or set_config(..., true)) outside a BEGIN block ends with its own
    statement (the server warns): the path stays the file's SET before it, where the new table went, and its rewrite
    runs. (Read as unknown before refac24: refused as maybe the live table's.)"""
    _arch(db)
    seeded(cli, db, sql_dir)
    before = _live_file(db)
    add_migration(sql_dir, "0002_local", f"-- transactional: false\nSET search_path = arch, public;\n{NEW}{local};\n"
                                         f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert applied(db) == [SEED, "0002_local"] and _live_file(db) == before
    assert db.query(f"SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'arch.{TABLE}'::regclass "
                    "AND attname = 'id'") == [("bigint",)]


@pytest.mark.parametrize("alter", ["ALTER DATABASE {db} SET search_path = arch, public",
                                   "ALTER ROLE CURRENT_USER SET search_path = arch, public",
                                   "ALTER ROLE CURRENT_USER IN DATABASE {db} SET \"Search_Path\" TO arch"])
def test_an_earlier_files_alter_database_or_role_search_path_leaves_the_later_files_path_unknown(cli, db, sql_dir,
                                                                                                 alter):
    _arch(db)
    seeded(cli, db, sql_dir)
    try:
        _refused_keeping_the_table(cli, db, sql_dir, [alter.format(db=db.name) + ";\n", NEW + RETYPE_LIVE], 2)
    finally:  # (a role's setting outlives the test's database)
        db.query("ALTER ROLE CURRENT_USER RESET search_path")


def test_the_files_path_not_the_sessions_decides_which_table_an_unqualified_name_means(cli, db, sql_dir):
    """reproLP: the database's default path is arch, public with a small arch table of the name; the file's own
    `SET search_path = public` retypes the big public table: refused, and the server would have rewritten it."""
    db.query(f"CREATE SCHEMA arch; CREATE TABLE arch.{TABLE} (id int, tenant_id int)")  # (before the seed, as _arch)
    seeded(cli, db, sql_dir)
    db.query(f"ALTER DATABASE {db.name} SET search_path = arch, public")
    text = f"SET search_path = public;\nALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"
    _refused_keeping_the_table(cli, db, sql_dir, [text], 2)
    for spelling in ("SET search_path = nosuch, public", "SET SCHEMA 'public'", 'SET search_path = "$user", public',
                     "SELECT set_config('search_path', 'nosuch , public', false)"):
        _refused_keeping_the_table(cli, db, sql_dir, [text.replace("SET search_path = public", spelling)], 2)
    before = _live_file(db)
    add_migration(sql_dir, "0002_retype", f"-- accept-rewrite: public.{TABLE}\n" + text)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _live_file(db) != before  # the server rewrote the public table, as judged


# the whole list, in order: schemas that do not exist skipped, an earlier one holding the name first
PASSES = {
    "created_in_the_first_schema": f"SET search_path = arch, public;\n{NEW}ALTER TABLE {TABLE} ALTER COLUMN id "
                                   "TYPE bigint;\n",
    "created_after_a_missing_schema": f"SET search_path = nosuch, arch, public;\n{NEW}ALTER TABLE {TABLE} ALTER COLUMN "
                                      "id TYPE bigint;\n",
    "pending_schema": f"CREATE SCHEMA arch2;\nSET search_path = arch2, public;\n{NEW}CREATE INDEX ON {TABLE} (id);\n",
    "set_config_literal": f"SELECT set_config('search_path', 'arch,public', false);\n{NEW}"
                          f"ALTER TABLE {TABLE} ADD COLUMN u uuid DEFAULT gen_random_uuid();\n",
    "set_schema": f"SET SCHEMA 'arch';\n{NEW}CREATE INDEX ON {TABLE} (tenant_id);\n",
    "earlier_file": f"SET search_path = arch, public;\n{NEW}",
}


@pytest.mark.parametrize("case", list(PASSES))
def test_an_unqualified_name_meaning_the_new_table_on_the_files_path_runs_and_the_live_table_is_kept(cli, db, sql_dir,
                                                                                                    case):
    _arch(db)
    seeded(cli, db, sql_dir)
    before = _live_file(db)
    texts = [PASSES[case]]
    if case == "earlier_file":  # (the next file sets the path again: the table an earlier pending file created)
        texts.append(f"SET search_path = arch, public;\nALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    _write(sql_dir, texts)
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _live_file(db) == before


def test_the_next_files_fresh_session_does_not_keep_the_path(cli, db, sql_dir):
    _arch(db)
    seeded(cli, db, sql_dir)
    _refused_keeping_the_table(cli, db, sql_dir, [f"SET search_path = arch, public;\n{NEW}",
                                                  f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"], 1)


def test_discard_all_gives_the_session_path_back(cli, db, sql_dir):
    _arch(db)
    seeded(cli, db, sql_dir)
    _refused_keeping_the_table(cli, db, sql_dir, [f"-- transactional: false\nSET search_path = arch;\n{NEW}DISCARD ALL;"
                                                  f"\nALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"], 5)


def test_alter_system_search_path_leaves_the_later_files_path_unknown(cli, db, sql_dir):
    _arch(db)
    seeded(cli, db, sql_dir)
    try:
        _refused_keeping_the_table(cli, db, sql_dir, ["-- transactional: false\nALTER SYSTEM SET search_path = arch;\n"
                                                      "SELECT pg_reload_conf();\n", NEW + RETYPE_LIVE], 2)
    finally:  # (the server's setting outlives the test's database)
        with db.server.connect(db.name) as conn:
            conn.autocommit = True
            conn.cursor().execute("ALTER SYSTEM RESET search_path")
            conn.cursor().execute("SELECT pg_reload_conf()")


def test_set_role_makes_user_in_the_path_another_schema(cli, db, sql_dir, password_role, monkeypatch):
    """The runner's own "$user" schema holds a small table of the name; after SET ROLE, "$user" is the other role's
    (none here) and the big public table is the one the server retypes: refused."""
    monkeypatch.setenv("SCHEMA_CREATORS_TRUSTED", password_role)  # (it owns the table: accepted, planted.py)
    seeded(cli, db, sql_dir)
    user = db.query("SELECT current_user")[0][0]
    db.query(f'CREATE SCHEMA "{user}"; CREATE TABLE "{user}".{TABLE} (id int); ALTER TABLE public.{TABLE} OWNER TO '
             f"{password_role}")  # (the role may alter it)
    for spelling in (f"SET ROLE {password_role}", f"SET SESSION AUTHORIZATION {password_role}"):
        for path in ("", 'SET search_path = "$user", public;\n'):
            _refused_keeping_the_table(cli, db, sql_dir, [f"{spelling};\n{path}ALTER TABLE {TABLE} ALTER COLUMN id "
                                                          "TYPE bigint;\n"], 2 + bool(path), plan=False)


# attack24k 3: code the judge cannot read that sets the path (a function with its own SET search_path clause whose body
# sets it for the session, an operator, a view, a trigger, an event trigger, a call inside CREATE TABLE AS, a
# prepared statement, a default calling set_config, a BEGIN ATOMIC body) or makes the path's first schema (a DO
# block's EXECUTE): the CREATE may have gone to arch, the live public table is the live one, refused.
_SETTER = "BEGIN PERFORM set_config('search_path', 'arch', false); {} END"
_CLAUSE = ("CREATE FUNCTION {}() RETURNS void LANGUAGE plpgsql SET search_path = public AS $f$"
           + _SETTER.format("") + "$f$")
_SETPI = "CREATE FUNCTION setpi(a int DEFAULT 1, b int DEFAULT 1) RETURNS int LANGUAGE plpgsql AS $f$" + _SETTER.format(
    "RETURN a;") + "$f$;\n"
HIDDEN = {
    "set_clause_live": (_CLAUSE.format("setpc"), ["SELECT setpc();\n"]),
    "set_clause_pending": ("", [_CLAUSE.format("setpc2") + ";\nSELECT setpc2();\n"]),
    "operator": (_SETPI + "CREATE OPERATOR ### (leftarg = int, rightarg = int, function = setpi)",
                 ["SELECT 1 ### 1;\n"]),
    "view": (_SETPI + "CREATE VIEW setv AS SELECT setpi() AS x", ["SELECT * FROM setv;\n"]),
    "view_calling_set_config": ("CREATE VIEW setv AS SELECT set_config('search_path', 'arch', false) AS x",
                                ["SELECT * FROM setv;\n"]),
    "trigger": ("CREATE TABLE trg (id serial); CREATE FUNCTION trgf() RETURNS trigger LANGUAGE plpgsql AS $f$"
                + _SETTER.format("RETURN new;") + "$f$; CREATE TRIGGER trg_b BEFORE INSERT ON trg FOR EACH ROW "
                "EXECUTE FUNCTION trgf()", ["INSERT INTO trg DEFAULT VALUES;\n"]),
    "column_default": ("CREATE TABLE dflt (id int, x text DEFAULT set_config('search_path', 'arch', false))",
                       ["INSERT INTO dflt (id) VALUES (1);\n"]),
    "begin_atomic": ("CREATE FUNCTION atom() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT set_config('search_path', "
                     "'arch', false); END", ["SELECT atom();\n"]),
    "create_table_as": (_SETPI, ["CREATE TABLE tmpx AS SELECT setpi() AS x;\n"]),
    "beside_another_settings_set_config": (_SETPI, ["SELECT set_config('lock_timeout', '0', false), setpi();\n"]),
    "event_trigger": ("", ["CREATE FUNCTION evt() RETURNS event_trigger LANGUAGE plpgsql AS $f$" + _SETTER.format("")
                           + "$f$;\nCREATE EVENT TRIGGER evt ON ddl_command_end EXECUTE FUNCTION evt();\n"
                           "COMMENT ON TABLE public.hcm_report_metadata IS 'x';\n"]),
    "prepare_execute": ("", ["PREPARE p AS SELECT set_config('search_path', 'arch', false);\nSET search_path = public;"
                             "\nEXECUTE p;\n"]),
    "schema_made_by_do": ("DROP SCHEMA arch", ["DO $$ BEGIN EXECUTE 'CREATE SCHEMA arch'; END $$;\n"
                                               "SET search_path = arch, public;\n"]),
    "schema_made_by_do_earlier_file": ("DROP SCHEMA arch", ["DO $$ BEGIN EXECUTE 'CREATE SCHEMA arch'; END $$;\n",
                                                            "SET search_path = arch, public;\n"]),
    "schema_made_by_a_function": ("DROP SCHEMA arch; CREATE FUNCTION mk() RETURNS void LANGUAGE plpgsql AS "
                                  "$f$BEGIN CREATE SCHEMA arch; END$f$", ["SELECT mk();\nSET search_path = arch, "
                                                                          "public;\n"]),
}


def _refused_and_kept(cli, db, sql_dir, case) -> None:
    """refused_by_migrate_and_plan, and the live table's file is the one it had once seeded (not rewritten)."""
    files = []

    def fill(text):  # (called first on the set-up, right after the seed)
        files.extend([] if files else [_live_file(db)])
        return text

    refused_by_migrate_and_plan(cli, db, sql_dir, case, fill)
    assert files == [_live_file(db)]


@pytest.mark.parametrize("case", list(HIDDEN))
def test_a_path_set_or_a_schema_made_by_code_the_judge_cannot_read_refuses_the_live_tables_rewrite(cli, db, sql_dir,
                                                                                                   case):
    setup, texts = HIDDEN[case]
    texts = texts[:-1] + [texts[-1] + NEW + RETYPE_LIVE]
    _refused_and_kept(cli, db, sql_dir, ("CREATE SCHEMA arch;" + setup, texts,
                                         (len(texts) - 1, texts[-1].count("\n")), RETYPED))


@pytest.mark.parametrize("code", ["", "CREATE FUNCTION harmless() RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET "
                                  "search_path = pg_catalog AS $f$BEGIN RETURN 1; END$f$"])
def test_code_that_cannot_set_the_path_leaves_it_known_and_the_new_table_is_the_one_retyped(cli, db, sql_dir, code):
    """No code of the database may set it or make a schema (a function with its own SET clause and a plain body
    cannot): the file's path stays known (nosuch skipped), the unqualified retype is the new arch table's, applied,
    the live table kept."""
    _arch(db)
    seeded(cli, db, sql_dir)
    db.query(code or "CREATE FUNCTION harmless() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    before = _live_file(db)
    add_migration(sql_dir, "0002_calls", f"SELECT harmless();\nSET search_path = nosuch, arch, public;\n{NEW}"
                                         "SELECT harmless();\n"
                                         "SELECT * FROM pg_settings;\n"  # (the system's own rule calls set_config)
                                         f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))
    assert _live_file(db) == before and db.query(f"SELECT count(*) FROM arch.{TABLE}") == [(0,)]


# attack24k 4: a ROLLBACK TO SAVEPOINT (or a non-transactional file's block ROLLBACK) undoes what the judge noted
RENAMED = (f"ALTER TABLE {TABLE} RENAME TO old_{TABLE};\nCREATE TABLE {TABLE} (id int, tenant_id varchar(50));\n")
VOLATILE = "CREATE FUNCTION vf() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT (random() * 9)::int'"
ROLLED_BACK = {
    "rename_and_create": ("SELECT 1", ["SAVEPOINT s;\n" + RENAMED + f"ROLLBACK TO SAVEPOINT s;\n{RETYPE_LIVE}"], (0, 5),
                          RETYPED),
    "nested": ("SELECT 1", ["SAVEPOINT a;\nSAVEPOINT b;\n" + RENAMED + "RELEASE SAVEPOINT b;\nROLLBACK TO a;\n"
                    f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"], (0, 7), RETYPED),
    "block": ("SELECT 1", ["-- transactional: false\nBEGIN;\n" + RENAMED + f"ROLLBACK;\n{RETYPE_LIVE}"], (0, 6),
              RETYPED),
    "function": (VOLATILE, ["SAVEPOINT s;\nCREATE OR REPLACE FUNCTION vf() RETURNS int LANGUAGE sql IMMUTABLE AS "
                            f"'SELECT 1';\nROLLBACK TO SAVEPOINT s;\nALTER TABLE {TABLE} ADD COLUMN x int DEFAULT "
                            "vf();\n"], (0, 4), "ADD COLUMN x DEFAULT vf()"),
    "path": ("CREATE SCHEMA arch", ["SAVEPOINT s;\nSET search_path = arch, public;\n" + NEW + "ROLLBACK TO "
                                    f"SAVEPOINT s;\nALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"], (0, 5),
             RETYPED),
    "path_block": ("CREATE SCHEMA arch", ["-- transactional: false\nBEGIN;\nSET search_path = arch;\n" + NEW +
                                          f"ROLLBACK;\nALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n"], (0, 6),
                   RETYPED),
}


@pytest.mark.parametrize("case", list(ROLLED_BACK))
def test_what_a_rollback_to_a_savepoint_undoes_the_judge_forgets(cli, db, sql_dir, case):
    _refused_and_kept(cli, db, sql_dir, ROLLED_BACK[case])


def test_a_released_savepoint_keeps_what_the_judge_noted(cli, db, sql_dir):
    seeded(cli, db, sql_dir)
    before = _live_file(db)
    add_migration(sql_dir, "0002_swap", "SAVEPOINT s;\n" + RENAMED + "RELEASE SAVEPOINT s;\n"
                                        f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE bigint;\n")
    ok(migrate(cli, db, sql_dir, *SMALL))  # (the new, empty table retyped; the live one renamed, not rewritten)
    assert db.query(f"SELECT relfilenode FROM pg_class WHERE relname = 'old_{TABLE}'") == [(before,)]
