"""What a pending file's DO blocks and routines write by a qualified name in their string bodies (attack23z 8): the
tables a file writes (postgres/file_paths.written) include them, so a DO block's INSERT INTO audit.log is held as the
same top-level INSERT is (planted.WRITTEN). Read by planted_bodies' readers: their constant EXECUTEs and inner DO
blocks too."""

from __future__ import annotations


def pending(node) -> set[tuple[str, str]] | None:
    """(schema, table) of what a pending DO block or routine (a pglast DoStmt / CreateFunctionStmt) writes by a
    qualified name in its string body, its constant EXECUTEs and inner DO blocks included (attack23z 8); None for a
    body no parser here reads (another language, one pglast cannot read): what it writes is unknown."""
    from migrator import planted_bodies, plpgsql_text

    routine = hasattr(node, "funcname")
    options = {o.defname: o.arg for o in [*(getattr(node, "args", None) or ()),
                                          *(getattr(node, "options", None) or ())]}
    language = str(getattr(options.get("language"), "sval", "sql" if routine else "plpgsql")).lower()
    body, found = plpgsql_text.body(node), set()
    try:
        if routine and language == "sql":
            found = planted_bodies.calls("sql", body) if body else found  # (BEGIN ATOMIC: a statement's tree)
        elif routine and language == "plpgsql":
            found = planted_bodies.calls("plpgsql", _definition(node, body))
        elif not routine:
            planted_bodies.do_names(language, body, found)
        elif language not in ("c", "internal"):
            return None
    except Exception:  # (pglast raises several kinds; planted_bodies.Unreadable)
        return None
    return {(schema, name) for kind, schema, name in found if kind == "w" and schema}


def _definition(node, body: str) -> str:
    """A pending routine's CREATE text laid out as pg_get_functiondef's (the signature on the first line, the body
    on the next), which planted_bodies reads, DECLAREd types of other schemas too."""
    from pglast import ast
    from pglast.stream import RawStream

    marker, tag = "hcm_body_here", "hcm"
    [option] = [o for o in node.options if o.defname == "as"]
    saved, option.arg = option.arg, (ast.String(sval=marker),)
    try:
        text = RawStream()(node)
    finally:
        option.arg = saved
    while f"${tag}$" in body:
        tag += "_"
    return text.replace(f"$${marker}$$", f"${tag}$\n{body}${tag}$", 1)
