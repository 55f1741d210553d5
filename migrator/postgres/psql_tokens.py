"""One token of psql's lexer in its INITIAL state (src/fe_utils/psqlscan.l), read forward as flex does: the longest
match of its rules at the position, the first rule on a tie, then the rule's throw-back (yyless).

Only where a token ends matters here: whether a `$` or a quote starts a token (and opens a dollar quote or a
string) or belongs to the token before it. psql versions end numbers and `$n` parameters in different places, so
a token is read by each version's rules and every end any of them gives is kept:

- up to 14: no trailing-junk rules; `1e` and `1e-` are thrown back to `1` (so `1e'x'` is 1 and an E'' string).
- 15: `{integer}{ident_start}` and the like take one letter after the digits (`1e` is one token); `1e-` is kept.
- 16: digits with underscores, 0x/0o/0b integers; the junk rules still take one letter.
- 17 and later: the junk rules take a whole identifier (`1a$$` is one token; psql 18 is the suite's).

In every version `$` continues an identifier but never starts one, and `$n` is a parameter only with digits
after the `$`: `1$1$$` is a number, a parameter and a `$$` that opens a dollar quote.
"""

from __future__ import annotations

import functools

from migrator import lazy_re
from migrator.path_text import server_name  # noqa: F401 (its readers import it from here)

# psql's ident_start (A-Z a-z _ and every byte >= 0x80) and ident_cont (those, digits and $), spelled as what they
# are not: a class of huge ranges takes milliseconds to compile.
START = r"[^\x00-\x40\x5b-\x5e\x60\x7b-\x7f]"
CONT = r"[^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]"
TAG_CHAR = r"[^\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]"  # a dollar quote's tag: ident_cont without $
IDENTIFIER = f"{START}{CONT}*"
# The one test of "an identifier character" (CONT) for every reader of SQL text: a `$` or a quote's E prefix right
# after one belongs to an identifier, a keyword next to one is part of it. Python's \w is not it: `·`, `€`, NBSP
# and `→` are identifier characters to PostgreSQL and psql (so `·$a$` is one name, never a dollar quote).
NOT_AFTER_IDENT = f"(?<!{CONT})"
NOT_BEFORE_IDENT = f"(?!{CONT})"


def ident_char(char: str) -> bool:
    """A character PostgreSQL's and psql's lexers count as part of an identifier (ident_cont)."""
    return not char.isascii() or char.isalnum() or char in "_$"

OP_CHARS = "~!@#^&|`?+-*/%<>="


def _version(integer: str, junk: str | None, thrown_back: bool, based: bool) -> tuple[tuple, tuple]:
    """(number rules as (pattern, characters thrown back), parameter rules) of one psql version."""
    decimal = rf"(?:{integer}\.(?:{integer})?|\.{integer})"
    real = rf"(?:{integer}|{decimal})[Ee][-+]?{integer}"
    rules = [(integer, 0), (decimal, 0), (rf"{integer}\.\.", 2), (real, 0)]
    if thrown_back:  # realfail1 / realfail2 give back the e and the sign
        rules += [(rf"(?:{integer}|{decimal})[Ee]", 1), (rf"(?:{integer}|{decimal})[Ee][-+]", 2)]
    else:
        rules.append((rf"(?:{integer}|{decimal})[Ee][-+]", 0))
    bases = [r"0[xX](?:_?[0-9A-Fa-f])+", r"0[oO](?:_?[0-7])+", r"0[bB](?:_?[01])+"] if based else []
    rules += [(base, 0) for base in bases] + [(r"0[xXoObB]_?", 0)] * bool(based)
    params = [rf"\${integer}"]
    if junk:
        rules += [(f"{kind}{junk}", 0) for kind in (integer, decimal, real, *bases)]
        params.append(rf"\${integer}{junk}")
    return (tuple((lazy_re.compile(pattern), back) for pattern, back in rules),
            tuple(lazy_re.compile(pattern) for pattern in params))


_UNDERSCORED = r"[0-9](?:_?[0-9])*"
VERSIONS = {
    "14": _version("[0-9]+", None, True, False),
    "15": _version("[0-9]+", START, False, False),
    "16": _version(_UNDERSCORED, START, False, True),
    "17": _version(_UNDERSCORED, IDENTIFIER, False, True),
}
ALL = frozenset(VERSIONS)

_SPACE = lazy_re.compile(r"[ \t\n\r\f]+")
_IDENT = lazy_re.compile(IDENTIFIER)
_OPERATOR = lazy_re.compile(r"[~!@#^&|`?+\-*/%<>=]+")
_DOLLAR = lazy_re.compile(rf"\$(?:{START}{TAG_CHAR}*)?\$")
# Tokens every version ends in the same place and that leave INITIAL as it is, a run of them skipped at once (the
# common case): white space, punctuation, an identifier no quote or & follows (E'' U&''), a plain integer before a
# character no number rule takes, operator characters short of a comment, `::`, `:=`, a dot before no digit.
_PLAIN_RUN = lazy_re.compile(
    rf"(?:[ \t\n\r\f,;()\[\]]++|{START}{CONT}*+(?![&'])|[0-9]++(?=[ \t\n\r\f,;()\[\]+*/<>=~!@#%^&|`?:-]|\Z)"
    r"|[~!@#^&|`?+*%<>=]|-(?!-)|/(?!\*)|::|:=|\.(?![0-9]))*+")
_QUOTE_PREFIX = {"e": "xe", "b": "xb", "x": "xh", "n": None}  # N'' is a plain '' to the lexer (xnstart: yyless(1))


def skip(line: str, pos: int) -> int:
    """Past the tokens from `pos` that every version reads alike and that leave INITIAL as it is."""
    return _PLAIN_RUN.match(line, pos).end()


def token(line: str, pos: int, versions: frozenset, std: bool) -> tuple:
    """(what, {end: versions}) for the token at `pos` (line[pos] exists). `what` is the lexer state the token
    enters (("xe", None), ("xc", 0), ("xdolq", "$a$") ...), or "\\\\" and ":" for a backslash and a colon (the
    caller decides), or None where the lexer stays in INITIAL."""
    char = line[pos]
    if char in " \t\n\r\f":
        return None, {_SPACE.match(line, pos).end(): versions}
    if line.startswith("--", pos):  # to the end of psql's line (it holds no \n; \r ends a comment too)
        cut = line.find("\r", pos)
        return None, {len(line) if cut < 0 else cut: versions}
    if line.startswith("/*", pos):
        return ("xc", 0), {pos + 2: versions}
    if char == "'":
        return ("xq" if std else "xe", None), {pos + 1: versions}
    if char == '"':
        return ("xd", None), {pos + 1: versions}
    if char in "\\:":
        return char, {pos + 1: versions}
    if char == "$":
        if line[pos + 1:pos + 2].isdigit() and line[pos + 1].isascii():
            return None, _ends(line, pos, versions, param=True)
        dollar = _DOLLAR.match(line, pos)
        return (("xdolq", dollar.group()), {dollar.end(): versions}) if dollar else (None, {pos + 1: versions})
    if char.isascii() and (char.isdigit() or (char == "." and line[pos + 1:pos + 2].isdigit())):
        return None, _ends(line, pos, versions, param=False)
    if char == ".":
        return None, {pos + (2 if line.startswith("..", pos) else 1): versions}
    if char in "eEbBxXnN" and line.startswith("'", pos + 1):
        kind = _QUOTE_PREFIX[char.lower()] or ("xq" if std else "xe")
        return (kind, None), {pos + 2: versions}
    if char in "uU" and line.startswith("&", pos + 1):
        after = line[pos + 2:pos + 3]
        if after in ("'", '"'):
            return ("xus" if after == "'" else "xd", None), {pos + 3: versions}
        return None, {pos + 1: versions}  # xufailed: the U alone
    ident = _IDENT.match(line, pos)
    if ident:
        return None, {ident.end(): versions}
    if char in OP_CHARS:  # an operator stops where a comment starts inside it
        run = _OPERATOR.match(line, pos).group()
        cuts = [cut for cut in (run.find("/*", 1), run.find("--", 1)) if cut > 0]
        return None, {pos + (min(cuts) if cuts else len(run)): versions}
    return None, {pos + 1: versions}


def _ends(line: str, pos: int, versions: frozenset, param: bool) -> dict:
    """{end: versions} of a number or parameter: the longest match of each version's rules, less what it gives back."""
    span = _SPAN.match(line, pos).group()  # all any rule can take
    if _SAME.fullmatch(span):
        return {pos + len(span): versions}
    return {pos + end: group for end, group in _span_ends(span, versions, param).items()}


# the characters a number or parameter rule can take: $ + - . digits, letters, _ and non-ASCII
_SPAN = lazy_re.compile(r"\$?[^\x00-\x23\x25-\x2a\x2c\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]*")
# a whole span every version reads as one token: $n, an integer, a decimal, a real
_SAME = lazy_re.compile(r"\$[0-9]+|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


@functools.lru_cache(maxsize=1024)
def _span_ends(span: str, versions: frozenset, param: bool) -> dict:
    ends: dict = {}
    for version in versions:
        best, back = 1, 0
        for pattern, give in ((p, 0) for p in VERSIONS[version][1]) if param else VERSIONS[version][0]:
            found = pattern.match(span)  # in the file's order: the first wins a tie
            if found and found.end() > best:
                best, back = found.end(), give
        ends.setdefault(best - back, set()).add(version)
    return {end: frozenset(group) for end, group in ends.items()}


