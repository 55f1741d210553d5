"""A DEFAULT is volatile when anything the server evaluates for it per row is (attack24k 1): an operator's function,
a cast's function (written, or the assignment cast of the value to the column's type), a called function's own
argument DEFAULTs, a domain's DEFAULT with any of these; an ALTER FUNCTION naming an argument by %TYPE touches every
overload. A function is told apart by its argument types' schemas too (attack24k 2): `vtk(arch.dk)` is a new overload,
not the live `vtk(public.dk)`. Refused by migrate and plan (nothing runs, the table keeps its file); the safe
spellings next to them apply without a rewrite."""

from __future__ import annotations

import pytest

from test_rewrites import TABLE
from test_rewrites_pending import applied_without_a_rewrite, refused_by_migrate_and_plan

LIVE = ("CREATE SCHEMA arch; CREATE FUNCTION vf() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT (random() * 100)::int';"
        "CREATE FUNCTION vadd(a int, b int) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT a + b + (random() * 9)::int';"
        "CREATE OPERATOR @+@ (LEFTARG = int, RIGHTARG = int, FUNCTION = vadd);"
        "CREATE TYPE mood AS ENUM ('a', 'b');"
        "CREATE FUNCTION vmood(int) RETURNS mood LANGUAGE sql VOLATILE"
        " AS $f$SELECT (CASE WHEN random() < 2 THEN 'a' ELSE 'b' END)::mood$f$;"
        "CREATE CAST (int AS mood) WITH FUNCTION vmood(int) AS ASSIGNMENT;"
        "CREATE DOMAIN dvol AS int DEFAULT 1 @+@ 1;"
        "CREATE FUNCTION ldf(a int DEFAULT vf()) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT a';"
        "CREATE TABLE small (id int PRIMARY KEY, n int);"
        "CREATE FUNCTION imf2(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 7';"
        "CREATE DOMAIN public.dk AS int; CREATE DOMAIN arch.dk AS int;"
        "CREATE FUNCTION vtk(public.dk) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT (random() * 9)::int'")
IMMUTABLE = "RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1'"
ADD = f"ALTER TABLE public.{TABLE} ADD COLUMN "
REWRITES = f"rewrites public.{TABLE}"
VOLATILE = f"(volatile: a value per row) {REWRITES}"
# (the pending files, (index of the refused file, its line), what its refusal says)
REFUSED = {
    "operator_live": ([ADD + "x int DEFAULT 1 @+@ 1;\n"], (0, 1), f"ADD COLUMN x DEFAULT 1 @+@ 1 {VOLATILE}"),
    "operator_pending": (["CREATE FUNCTION vadd2(a int, b int) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT a + b';\n"
                          "CREATE OPERATOR #+# (LEFTARG = int, RIGHTARG = int, FUNCTION = vadd2);\n",
                          ADD + "x int DEFAULT 1 #+# 1;\n"], (1, 1), f"ADD COLUMN x DEFAULT 1 #+# 1 {VOLATILE}"),
    "operator_unknown": (["DO $$BEGIN EXECUTE 'CREATE OPERATOR ~+~ (LEFTARG = int, RIGHTARG = int, FUNCTION = vadd)';"
                          " END$$;\n" + ADD + "x int DEFAULT 1 ~+~ 1;\n"], (0, 2),
                         f"ADD COLUMN x DEFAULT 1 ~+~ 1 (taken as volatile, operator ~+~ not found: a value per row) "
                         f"{REWRITES}"),
    "cast_live": ([ADD + "m mood DEFAULT 1::mood;\n"], (0, 1), f"ADD COLUMN m DEFAULT CAST(1 AS mood) {VOLATILE}"),
    "cast_pending": (["CREATE TYPE mood2 AS ENUM ('a');\nCREATE FUNCTION vm2(int) RETURNS mood2 LANGUAGE sql VOLATILE"
                      " AS $f$SELECT 'a'::mood2$f$;\nCREATE CAST (int AS mood2) WITH FUNCTION vm2(int);\n"
                      + ADD + "m mood2 DEFAULT CAST(1 AS mood2);\n"], (0, 4),
                     f"ADD COLUMN m DEFAULT CAST(1 AS mood2) {VOLATILE}"),
    "assignment_cast_of_a_constant": ([ADD + "m mood DEFAULT 1;\n"], (0, 1), f"ADD COLUMN m DEFAULT 1 {VOLATILE}"),
    "argument_default_live": ([ADD + "x int DEFAULT ldf();\n"], (0, 1), f"ADD COLUMN x DEFAULT ldf() {VOLATILE}"),
    "argument_default_pending": (["CREATE FUNCTION idf(a int DEFAULT vf()) RETURNS int LANGUAGE sql IMMUTABLE"
                                  " AS 'SELECT a';\n" + ADD + "x int DEFAULT idf();\n"], (0, 2),
                                 f"ADD COLUMN x DEFAULT idf() {VOLATILE}"),
    "domain_default_operator_live": ([ADD + "c dvol;\n"], (0, 1),
                                     f"ADD COLUMN c of domain dvol, whose DEFAULT is volatile (a value per row) "
                                     f"{REWRITES}"),
    "domain_default_operator_pending": (["CREATE DOMAIN dvo AS int DEFAULT 1 @+@ 1;\n" + ADD + "c dvo;\n"], (0, 2),
                                        f"ADD COLUMN c of domain dvo, whose DEFAULT is volatile (a value per row) "
                                        f"{REWRITES}"),
    "alter_function_percent_type": (["ALTER FUNCTION imf2(small.n%TYPE) VOLATILE;\n"
                                     + ADD + "x int DEFAULT imf2(1);\n"],
                                    (0, 2), f"ADD COLUMN x DEFAULT imf2(1) {VOLATILE}"),
    "argument_type_other_schema": ([f"CREATE OR REPLACE FUNCTION vtk(arch.dk) {IMMUTABLE};\n"
                                    + ADD + "x int DEFAULT vtk(1::public.dk);\n"], (0, 2),
                                   f"ADD COLUMN x DEFAULT vtk(CAST(1 AS public.dk)) {VOLATILE}"),
    "argument_type_on_the_file_path": (["SET search_path = arch, public;\n"
                                        f"CREATE OR REPLACE FUNCTION public.vtk(dk) {IMMUTABLE};\n"
                                        + ADD + "x int DEFAULT public.vtk(1::public.dk);\n"], (0, 3),
                                       f"ADD COLUMN x DEFAULT public.vtk(CAST(1 AS public.dk)) {VOLATILE}"),
    # an implicit cast the server may apply to an argument: its function is evaluated per row
    "implicit_cast_of_an_argument": (["CREATE FUNCTION vm3(int) RETURNS mood LANGUAGE sql VOLATILE"
                                      " AS $f$SELECT 'a'::mood$f$;\nDROP CAST (int AS mood);\n"
                                      "CREATE CAST (int AS mood) WITH FUNCTION vm3(int) AS IMPLICIT;\n"
                                      "CREATE FUNCTION mf(mood) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1';\n"
                                      + ADD + "x int DEFAULT mf(1);\n"], (0, 5),
                                     "ADD COLUMN x DEFAULT mf(1) (taken as volatile, an implicit cast calls a volatile "
                                     f"function: a value per row) {REWRITES}"),
    # a search_path the judge cannot read: an unqualified type may be any schema's, so the live function stays
    "argument_type_on_an_unread_path": (["DO $$BEGIN PERFORM pg_catalog.set_config('search_path', 'arch', false);"
                                         " END$$;\n"
                                         f"CREATE OR REPLACE FUNCTION public.vtk(dk) {IMMUTABLE};\n"
                                         + ADD + "x int DEFAULT public.vtk(1::public.dk);\n"], (0, 3),
                                        f"ADD COLUMN x DEFAULT public.vtk(CAST(1 AS public.dk)) {VOLATILE}"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_volatile_function_reached_without_a_call_is_refused(cli, db, sql_dir, case):
    texts, where, what = REFUSED[case]
    refused_by_migrate_and_plan(cli, db, sql_dir, (LIVE, texts, where, what))  # (the table kept its file)


@pytest.mark.parametrize("texts", [
    # operators, casts and argument DEFAULTs of none but immutable / stable functions
    [ADD + "x int DEFAULT 1 + 2 * 3;\n" + ADD + "m mood DEFAULT 'a';\n" + ADD + "y text DEFAULT 'r' || 1::text;\n"
     + ADD + "t timestamptz DEFAULT now() + interval '1 day';\n"],
    ["CREATE FUNCTION idf2(a int DEFAULT 1) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT a';\n"
     + ADD + "x int DEFAULT idf2();\n"],
    # the live function replaced by an immutable one of the same argument types, however they are spelled
    [f"CREATE OR REPLACE FUNCTION vtk(public.dk) {IMMUTABLE};\n" + ADD + "x int DEFAULT vtk(1::public.dk);\n"],
    [f"CREATE OR REPLACE FUNCTION vtk(dk) {IMMUTABLE};\n" + ADD + "x int DEFAULT vtk(1::dk);\n"],
    # a value cast to the column's type already needs no cast the judge must find (a type it cannot see)
    ["DO $$BEGIN EXECUTE $t$CREATE TYPE hidden AS ENUM ('a')$t$; END$$;\n" + ADD + "h hidden DEFAULT 'a'::hidden;\n"],
], ids=["immutable_operators_casts", "immutable_argument_default", "replaced_qualified", "replaced_unqualified",
        "cast_to_the_column_type"])
def test_what_evaluates_once_runs_without_a_rewrite(cli, db, sql_dir, texts):
    applied_without_a_rewrite(cli, db, sql_dir, LIVE, texts)
