"""A pending function or domain is known by what PostgreSQL knows it as (attack24j): a function by (schema, name,
argument types), a domain by (schema, name), never by its bare name. A new overload, or a new object of the same name
in another schema, does not stand in for the live one a statement names: refused by migrate and plan, nothing runs
and the table keeps its file. A pending ALTER DOMAIN ... DROP CONSTRAINT of a live domain is followed: the domain left
without a constraint is plain (the server adds the column without a rewrite)."""

from __future__ import annotations

import pytest

from test_rewrites import TABLE
from test_rewrites_pending import applied_without_a_rewrite, refused_by_migrate_and_plan

VF = ("CREATE SCHEMA arch; CREATE FUNCTION vf() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT (random() * 100)::int'; "
      "CREATE DOMAIN dchk AS int CHECK (VALUE > 0); CREATE DOMAIN dbig AS bigint")
IMMUTABLE = "RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1'"
ADD_VF = f"ALTER TABLE {TABLE} ADD COLUMN x int DEFAULT {{}}();\n"
VOLATILE = "(volatile: a value per row) rewrites public." + TABLE
CHECKED = f"which has a CHECK or NOT NULL constraint (checked on every row, default or not) rewrites public.{TABLE}"
# (live setup, the pending files, (index of the refused file, its line), what its refusal says)
REFUSED = {
    "function_overload_same_file": (VF, [f"CREATE FUNCTION vf(p int) {IMMUTABLE};\n" + ADD_VF.format("vf")], (0, 2),
                                    f"ADD COLUMN x DEFAULT vf() {VOLATILE}"),
    "function_overload_earlier_file": (VF, [f"CREATE FUNCTION vf(p int) {IMMUTABLE};\n", ADD_VF.format("vf")], (1, 1),
                                       f"ADD COLUMN x DEFAULT vf() {VOLATILE}"),
    "function_other_schema_same_name": (VF, [f"CREATE FUNCTION arch.vf() {IMMUTABLE};\n" + ADD_VF.format("public.vf")],
                                        (0, 2), f"ADD COLUMN x DEFAULT public.vf() {VOLATILE}"),
    "function_set_schema_swap": (VF, [f"ALTER FUNCTION vf() SET SCHEMA arch;\nCREATE FUNCTION vf() {IMMUTABLE};\n"
                                      + ADD_VF.format("arch.vf")], (0, 3),
                                 f"ADD COLUMN x DEFAULT arch.vf() {VOLATILE}"),
    "function_set_schema_swap_on_the_path": (
        VF, [f"ALTER FUNCTION vf() SET SCHEMA arch;\nCREATE FUNCTION public.vf() {IMMUTABLE};\n"
             "SET search_path = arch, public;\n" + ADD_VF.format("vf").replace(TABLE, f"public.{TABLE}")], (0, 4),
        f"ADD COLUMN x DEFAULT vf() {VOLATILE}"),
    "domain_other_schema_same_name": (VF, ["CREATE DOMAIN arch.dchk AS int;\n"
                                           f"ALTER TABLE {TABLE} ADD COLUMN c public.dchk;\n"], (0, 2),
                                      f"ADD COLUMN c of domain public.dchk, {CHECKED}"),
    "domain_retype_other_schema_same_name": (VF, ["CREATE DOMAIN arch.dbig AS int;\n"
                                                  f"ALTER TABLE {TABLE} ALTER COLUMN id TYPE public.dbig;\n"], (0, 2),
                                             f"ALTER COLUMN id TYPE public.dbig rewrites public.{TABLE}"),
    "domain_default_other_schema_same_name": (
        VF + "; CREATE DOMAIN d1v AS uuid DEFAULT gen_random_uuid()",
        ["CREATE DOMAIN arch.d1v AS uuid;\n" f"ALTER TABLE {TABLE} ADD COLUMN u public.d1v;\n"], (0, 2),
        f"ADD COLUMN u of domain public.d1v, whose DEFAULT is volatile (a value per row) rewrites public.{TABLE}"),
    # the name a pending RENAME TO took away, made again by a constrained CREATE DOMAIN: that new domain's
    "domain_renamed_away_new_constrained": (VF, ["ALTER DOMAIN dchk RENAME TO dold;\n"
                                                 "CREATE DOMAIN dchk AS int CHECK (VALUE > 5);\n"
                                                 f"ALTER TABLE {TABLE} ADD COLUMN c dchk;\n"], (0, 3),
                                            f"ADD COLUMN c of domain dchk, {CHECKED}"),
    # a function the judge cannot see (made in a DO block) is taken as volatile, and the refusal says why
    "function_not_found": (VF, ["DO $$BEGIN EXECUTE $f$CREATE FUNCTION cf() " + IMMUTABLE + "$f$; END$$;\n"
                                + ADD_VF.format("cf")], (0, 2),
                           "ADD COLUMN x DEFAULT cf() (taken as volatile, cf() not found: a value per row) rewrites"),
    # a domain keeps a constraint another DROP leaves, and one a pending ALTER DOMAIN gives counts
    "domain_one_of_two_checks_dropped": (
        "CREATE DOMAIN d2 AS int CONSTRAINT pos CHECK (VALUE > 0) CONSTRAINT small CHECK (VALUE < 9)",
        [f"ALTER DOMAIN d2 DROP CONSTRAINT pos;\nALTER TABLE {TABLE} ADD COLUMN c d2;\n"], (0, 2),
        f"ADD COLUMN c of domain d2, {CHECKED}"),
    "domain_check_dropped_then_set_not_null": (
        VF, ["ALTER DOMAIN dchk DROP CONSTRAINT dchk_check;\nALTER DOMAIN dchk SET NOT NULL;\n"
             f"ALTER TABLE {TABLE} ADD COLUMN c dchk;\n"], (0, 3), f"ADD COLUMN c of domain dchk, {CHECKED}"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_new_object_of_the_same_name_does_not_stand_for_the_live_one(cli, db, sql_dir, case):
    refused_by_migrate_and_plan(cli, db, sql_dir, REFUSED[case])  # (nothing applied: the table kept its file)


@pytest.mark.parametrize("texts", [
    # the live function renamed away, a new immutable one under its name: the new one is called
    ["ALTER FUNCTION vf() RENAME TO vf_old;\n" f"CREATE FUNCTION vf() {IMMUTABLE};\n" + ADD_VF.format("vf")],
    # an overload the call cannot mean is no reason to refuse
    [f"CREATE FUNCTION arch.vf(p int) {IMMUTABLE};\n" f"CREATE FUNCTION arch.cf() {IMMUTABLE};\n"
     + ADD_VF.format("arch.cf")],
    # the live domain's only CHECK dropped: a plain domain
    ["ALTER DOMAIN dchk DROP CONSTRAINT dchk_check;\n" f"ALTER TABLE {TABLE} ADD COLUMN c dchk;\n"],
], ids=["renamed_away", "other_overload", "check_dropped"])
def test_the_new_side_runs_without_a_rewrite(cli, db, sql_dir, texts):
    applied_without_a_rewrite(cli, db, sql_dir, VF, texts)
