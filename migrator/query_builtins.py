"""Built-in functions that run SQL they are handed (attack23z 10): each is an EXECUTE that no reader of bodies saw.

The set is PostgreSQL's own functions whose C code runs an argument through SPI (src/backend/utils/adt: tsvector_op.c
ts_stat, tsquery_rewrite.c ts_rewrite(tsquery, text), xml.c's query_to_xml* / cursor_to_xml* / table_to_xml* /
schema_to_xml* / database_to_xml*; ruleutils.c and ri_triggers.c run fixed catalog queries only), and the common
extensions' (tablefunc's crosstab / connectby, dblink's). test_attack23z_builtins checks the names against the
server's pg_proc. The readers (body_paths: a pending statement's and its bodies' path changes;
planted_bodies: what an own body calls) read a constant query as SQL in turn, and a relation such a function reads
whole (table_to_xml: its view's code runs) as `TABLE name`; anything else they count unread (fail closed).
A name is matched in any schema: an own function so named is read the same way, which only costs a refusal.
"""

from __future__ import annotations

# name -> the positions of its query arguments ("TABLE": a relation it reads whole), by its argument count
_QUERIES = {"ts_stat": {1: (0,), 2: (0,)}, "ts_rewrite": {2: (1,)},
            **{name: {4: (0,)} for name in ("query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema")}}
_TABLES = {name: {4: (0,)} for name in ("table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema")}
# what runs is not in its arguments: a cursor's query, every table of a schema or database, built or remote SQL
_UNREAD = {*(f"{kind}_to_xml{form}" for kind in ("cursor", "schema", "database") for form in ("", "schema",
                                                                                              "_and_xmlschema")),
           "crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby", "dblink", "dblink_exec", "dblink_open",
           "dblink_send_query"} - {"cursor_to_xml_and_xmlschema"}
NAMES = (*_QUERIES, *_TABLES, *sorted(_UNREAD))
PATTERN = "|".join(NAMES)  # (for a reader's cheap text filter: whether a text may call one)


class Unread(Exception):
    """A call of one whose SQL is not a constant: what it runs is not known before the run."""


def _constant(node) -> str | None:
    """The string a node spells as a constant (a cast of one too): a pglast node or its JSON form."""
    if isinstance(node, dict):
        while isinstance(node.get("TypeCast"), dict):
            node = node["TypeCast"].get("arg") or {}
        return node.get("A_Const", {}).get("sval", {}).get("sval")
    while type(node).__name__ == "TypeCast":
        node = node.arg
    value = getattr(node, "val", None) if type(node).__name__ == "A_Const" else None
    return getattr(value, "sval", None)


def sql(name: str, args: list) -> list[str]:
    """The SQL texts a call of function `name` with `args` (pglast nodes or their JSON) runs: none when it is not one
    of these; Unread when what it runs is not a constant."""
    if name in _UNREAD:
        raise Unread(f"a call of {name}, which runs SQL the runner does not read before the run")
    positions = {**_QUERIES, **_TABLES}.get(name, {}).get(len(args or ()), ())
    texts = [_constant(args[at]) for at in positions]
    if None in texts:
        raise Unread(f"a call of {name} with a query built at run time")
    return [f"TABLE {text}" if name in _TABLES else text for text in texts]
