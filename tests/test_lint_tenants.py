"""`sql lint --schema`'s tenant rule on real files: a pg_dump of a schema written into a tenant's migration
(every `public.` there names either a tenant's object, which must be flagged, or an extension's, which must
not), and the tester's file of finding 11 (strings naming relations, COPY, PROCEDURE, AGGREGATE, ANALYZE, an
E'' string that must not desynchronise the rest, nested comments, dollar-quoted literals).
"""

import re
import subprocess

import pytest

from conftest import _bin

TENANT_OBJECTS = {"t1", "t1_id_seq", "t2", "v", "touch", "p", "agg", "t1_email", "t1_name_trgm", "mycoll_t"}
EXTENSION_OBJECTS = {"citext", "gin_trgm_ops", "crosstab", "moddatetime", "mycoll", "citext_ops"}

# A tenant's schema as a team builds it next to extensions in public (the collation stands for an extension's:
# the lint cannot tell them apart and must not flag COLLATE public.x).
SCHEMA = """
CREATE EXTENSION citext SCHEMA public;
CREATE EXTENSION pg_trgm SCHEMA public;
CREATE EXTENSION tablefunc SCHEMA public;
CREATE EXTENSION moddatetime SCHEMA public;
CREATE COLLATION public.mycoll FROM "C";
CREATE TABLE t1 (id serial PRIMARY KEY, email citext NOT NULL, name text COLLATE mycoll, updated_at timestamptz);
CREATE TABLE t2 (id int REFERENCES t1 (id), t1_id int);
CREATE INDEX t1_email ON t1 (email citext_ops);
CREATE INDEX t1_name_trgm ON t1 USING gin (name gin_trgm_ops);
CREATE TRIGGER t1_moddatetime BEFORE UPDATE ON t1 FOR EACH ROW EXECUTE FUNCTION moddatetime(updated_at);
CREATE VIEW v AS SELECT ct.a, ct.b, t1.email::citext AS e
  FROM crosstab('select ''r''::text, ''c''::text, 1') AS ct(a text, b int) JOIN t1 ON t1.id = ct.b;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE public.t2 SET t1_id = NEW.id;  -- a body is code: this name bypasses the tenant's schema
  RETURN NEW;
END $$;
CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$;
CREATE AGGREGATE agg(int) (sfunc = int4pl, stype = int);
COMMENT ON TABLE t1 IS 'the users';
"""


def lint(cli, sql_dir, *schemas):
    """The tenant findings as 'file:line:column kind name', the rest of the lint's output (squawk's) left out."""
    args = [arg for schema in schemas for arg in ("--schema", schema)]
    result = cli("sql", "lint", "--sql-dir", sql_dir, *args)
    found = [line for line in result.stdout.splitlines() if ": tenant-" in line]
    return result, [re.sub(r"^.*/([^/]+:\d+:\d+): tenant-(\w+): (\S+) .*", r"\1 \2 \3", line) for line in found]


@pytest.mark.parametrize("data", [False, True], ids=["schema-only", "with-data"])
def test_a_pg_dump_in_a_tenant_migration_flags_each_tenant_object_and_no_extension_object(cli, db, tmp_path, data):
    db.query(SCHEMA + "INSERT INTO t1 (email, name) VALUES ('A@x', E'it\\'s'); INSERT INTO t2 VALUES (1, 1);")
    dump = subprocess.run([_bin("pg_dump"), *([] if data else ["--schema-only"]), "--no-owner", "--schema", "public",
                           "--restrict-key=fixed", "-d", db.url], capture_output=True, text=True, check=True).stdout
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "0001_baseline.sql").write_text(dump)
    # What each `public.x` in the dump is, read from the dump by position (independently of the lint): a tenant's
    # object (found at its `public`, or at the quote of the string it is in), or an extension's (not found).
    expected, extension_uses = [], 0
    for number, line in enumerate(dump.splitlines(), 1):
        if line.startswith("--"):
            continue
        for match in re.finditer(r"public\.(\w+)", line):
            if match[1] in EXTENSION_OBJECTS and not line.startswith("CREATE COLLATION"):  # creating it is flagged
                extension_uses += 1
                continue
            assert match[1] in TENANT_OBJECTS | {"mycoll"}, line
            quoted = line[match.start() - 1] == "'"
            name = (line[match.start() - 1:line.index("'", match.start()) + 1] if quoted
                    else re.match(r"public\.\w+(?:\.\w+)?", line[match.start():])[0])
            expected.append(f"{number}:{match.start() + 1 - quoted} schema {name}")
    search_path = next(n for n, line in enumerate(dump.splitlines(), 1) if "set_config('search_path'" in line)
    result, found = lint(cli, sql_dir, "pb")
    assert len(expected) == (24 if data else 21), expected  # with data: the two COPY and the setval
    if not data:  # (with data, the runner's own refusal of COPY FROM stdin stands in for the file's other checks)
        expected.append(f"{search_path}:1 outside sets")
    assert found == [f"0001_baseline.sql:{f}" for f in sorted(expected, key=lambda f: tuple(
        int(n) for n in f.split()[0].split(":")))], "\n".join(found)
    assert result.exit_code == 1
    # the dump really holds what the rule is about: a serial's default, OWNED BY, routines, a body, extensions' uses
    assert "nextval('public.t1_id_seq'::regclass)" in dump and "UPDATE public.t2" in dump
    assert "OWNED BY public.t1.id" in dump and "CREATE PROCEDURE public.p()" in dump
    assert "CREATE AGGREGATE public.agg(integer)" in dump
    # with data, COPY ... FROM stdin (which the runner refuses: the file's own finding) and setval are there too
    assert ("COPY public.t1 (id, email, name, updated_at) FROM stdin;" in dump) == data
    assert ("SELECT pg_catalog.setval('public.t1_id_seq', 1, true);" in dump) == data
    assert ("\tit's\t" in dump) == data  # a data row with a quote, which is not SQL and must not hide what follows
    assert ("COPY ... FROM stdin" in result.stdout) == data
    assert "email public.citext NOT NULL" in dump and "COLLATE public.mycoll," in dump
    assert "FROM (public.crosstab(" in dump and "(name public.gin_trgm_ops)" in dump
    assert "EXECUTE FUNCTION public.moddatetime(" in dump and extension_uses == 5, dump


# The tester's file (finding 11), with its misses and false alarms, and more of each kind.
FINDING_11 = r"""CREATE SEQUENCE t1_id_seq;
CREATE TABLE t1 (id integer NOT NULL DEFAULT nextval('public.t1_id_seq'::regclass), email public.citext);
SELECT pg_catalog.setval('public.t1_id_seq', 1, false);
COPY public.t1 (id, email) FROM '/dev/null';
CREATE PROCEDURE public.p() LANGUAGE sql AS 'select 1';
CREATE AGGREGATE public.agg(int) (sfunc = int4pl, stype = int);
ANALYZE public.t1 (id);
SELECT * FROM public.crosstab('select 1') AS ct(a int);
/* outer /* inner */ public.not_code */
COMMENT ON TABLE t1 IS $c$moved from public.old_t1$c$;
SELECT E'it\'s';
CREATE TABLE t2 (id int REFERENCES public.t1(id), s text DEFAULT 'x');
CREATE VIEW v AS SELECT * FROM public.t1;
SELECT 'public.t'::regclass, to_regclass('public.t'), CAST('pb.t' AS regclass), regclass 'mz."T"';
CREATE INDEX i ON t1 USING gist (email public.citext_ops);
CREATE TABLE t3 (c text COLLATE public.mycoll, g public.geometry(Point,4326), d public.citext[]);
ALTER TABLE t3 ALTER COLUMN c TYPE public.citext, ALTER d SET DATA TYPE public.citext[] USING d::public.citext[];
SELECT * FROM /* a /* nested */ public.gone */ t1 JOIN public.crosstab('x') AS c(a int) ON true;
VACUUM (ANALYZE) pb.t1 (id);
SELECT U&'\0027public.x', E'\'' FROM t1;
CREATE TRIGGER tr BEFORE UPDATE ON t1 FOR EACH ROW EXECUTE FUNCTION public.moddatetime(updated_at);
DO $do$ BEGIN PERFORM nextval('public.t1_id_seq'); EXECUTE $x$SELECT 1$x$; END $do$;
CREATE TYPE public.mood AS ENUM ('a');
SELECT 'public.t1'::text, nextval('t1_id_seq'), pb.t1.id FROM t1;
INSERT INTO "public"."t1" SELECT * FROM "Public".t1;
"""

EXPECTED_11 = [
    "2:54 schema 'public.t1_id_seq'",
    "3:26 schema 'public.t1_id_seq'",
    "4:6 schema public.t1",
    "5:18 schema public.p",
    "6:18 schema public.agg",
    "7:9 schema public.t1",
    "12:36 schema public.t1",
    "13:32 schema public.t1",
    "14:8 schema 'public.t'",
    "14:42 schema 'public.t'",
    "14:60 schema 'pb.t'",
    "14:90 schema 'mz.\"T\"'",
    "19:18 schema pb.t1",
    "22:31 schema 'public.t1_id_seq'",
    "23:13 schema public.mood",
    "24:49 schema pb.t1.id",
    "25:13 schema \"public\".\"t1\"",
]


def test_finding_11_every_miss_is_found_at_its_line_and_column_and_no_false_alarm(cli, tmp_path):
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "0001_tenant.sql").write_text(FINDING_11)
    result, found = lint(cli, sql_dir, "pb", "mz")
    assert found == [f"0001_tenant.sql:{f}" for f in EXPECTED_11], "\n".join(found)
    assert result.exit_code == 1
    assert ("0001_tenant.sql:4:6: tenant-schema: public.t1 names schema public, bypassing each tenant's schema "
            "(write the name unqualified: each tenant's search_path finds it)") in result.stdout
    # the same file's rollback is read the same way
    (sql_dir / "0001_tenant.rollback.sql").write_text("DROP TABLE t3;\nDROP TABLE IF EXISTS t2, public.t1;\n")
    assert lint(cli, sql_dir, "pb", "mz")[1] == (["0001_tenant.rollback.sql:2:26 schema public.t1"]
                                                 + [f"0001_tenant.sql:{f}" for f in EXPECTED_11])


def test_without_schemas_nothing_is_flagged(cli, tmp_path):
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "0001_tenant.sql").write_text(FINDING_11)
    assert lint(cli, sql_dir)[1] == []


def test_a_relation_right_after_from_parenthesis_is_flagged_as_pg_dump_writes_joins(cli, tmp_path):
    """attack16c 5: pg_dump writes every view with a join as FROM (public.t2 JOIN public.t1 ON ...)."""
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "0001_views.sql").write_text(
        "CREATE VIEW v3 AS SELECT 1 FROM (public.t2 JOIN t1 ON true);\n"
        "CREATE VIEW v4 AS SELECT 1 FROM ((public.t2 a JOIN public.t1 b ON true) JOIN public.t3 c ON true);\n"
        "CREATE VIEW v5 AS SELECT 1 FROM t1, (public.t2 JOIN t1 x ON true);\n"
        "CREATE VIEW v6 AS SELECT count(public.t9) FROM (SELECT 1) s;\n")
    result = cli("sql", "lint", "--sql-dir", folder, "--schema", "pb")
    found = [line.split(": tenant-schema")[0].rsplit("/", 1)[1] for line in result.stdout.splitlines() if "tenant-schema" in line]
    assert found == ["0001_views.sql:1:34", "0001_views.sql:2:35", "0001_views.sql:2:52", "0001_views.sql:2:78",
                     "0001_views.sql:3:38"], result.stdout


@pytest.mark.parametrize("text, flagged", [
    ("DROP TABLE é_t, public.t1;", "public.t1"),
    ("SELECT 1 FROM a€ x, public.t2 y;", "public.t2"),
    ("SELECT 1 FROM ·a x, public.t2 y;", "public.t2"),
    ("DROP TABLE e_t, public.t1;", "public.t1"),
    ("SELECT f(é, public.t2) FROM x;", None),
])
def test_a_relation_list_with_a_non_ascii_name_is_read_as_postgresql_reads_names(text, flagged):
    """fix23am: the list reader's item class was [A-Za-z_][\\w$]*, so a list whose other item is a name PostgreSQL
    reads (`é_t`, `a€`: psql_tokens.IDENTIFIER) was no relation list and its public.t1 went unflagged. Failed before:
    no finding for the first three."""
    from migrator import lint

    assert [name for _, name, _ in lint.qualified_names(text, ["pb"])] == ([flagged] if flagged else [])
