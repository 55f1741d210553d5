"""A search_path's text as the server reads it: its names split, folded and cut (SplitIdentifierString,
downcase_identifier, truncate_identifier), for every reader of a path (body_paths, risks_path, file_paths)."""

from __future__ import annotations

import re

_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def server_name(name: str, quoted: bool) -> str:
    """An identifier as a UTF-8 database stores it: unquoted, folded in ASCII only (downcase_identifier: `Àpp` stays
    `Àpp`); either way cut to 63 bytes on a character boundary (truncate_identifier). Python's lower() and an uncut
    name made the runner check a schema that does not exist while the server used another's (attack23w 8)."""
    return (name if quoted else name.translate(_ASCII_UPPER)).encode()[:63].decode(errors="ignore")


# (the server's scanner_isspace: ASCII blanks only, never Python's Unicode \s: 'public,<U+00A0>app' names " app")
_LIST_ITEM = re.compile(r'[ \t\n\r\f\v]*(?:"((?:[^"]|"")*)"|([^ \t\n\r\f\v,"]+))[ \t\n\r\f\v]*(,|$)')


def split_identifiers(value: str) -> list[str] | None:
    """A search_path's text as the server splits it (SplitIdentifierString): unquoted names folded, each cut as the
    server does (server_name); None when the server would refuse it."""
    found, at = [], 0
    value = value.strip(" \t\n\r\f\v")
    while value and at <= len(value):
        match = _LIST_ITEM.match(value, at)
        if not match:
            return None
        quoted = match[1] is not None
        found.append(server_name(match[1].replace('""', '"') if quoted else match[2], quoted))
        at = match.end()
        if not match[3]:
            break
    return found
