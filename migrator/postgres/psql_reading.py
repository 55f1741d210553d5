"""What psql's lexer could see in a file: no reading of it may expose a backslash (a meta-command) to psql.

`plan | psql` feeds a file under review to a reviewer's psql, so the file must not be able to make psql run a
meta-command (`\\! cmd` runs a shell command), whatever it does to the session first. psql lexes its input one
line at a time (src/fe_utils/psqlscan.l, src/bin/psql/mainloop.c), and two things it takes from the server can
change between any two lines and change where a literal ends:

- standard_conforming_strings: off, a plain '...' takes backslash escapes. A file can turn it off by routes no
  text check can list (set_config with a computed name, EXECUTE in a DO block, ALTER ROLE ... SET, PGOPTIONS...).
- client_encoding: in SJIS, BIG5, GBK, UHC, GB18030 or JOHAB a byte >= 0x80 swallows the bytes after it, quotes
  included (`SET client_encoding TO 'SJIS'` and a UTF-8 file then reads otherwise), and dollar-quote tags are
  compared as psql's buffer holds them (as_lexed).

So tracking the setting is not attempted: every line is read under every combination, starting from every
state the lines before can leave psql's lexer in, and a backslash outside a literal in any reading is refused.
psql versions differ where a number or `$n` runs into letters, digits or `$` (psql_tokens): every version is read.
A psql variable interpolated as it is (`:name`) is refused too: psql lexes its value, and one of them,
LAST_ERROR_MESSAGE, is whatever text the file's last failing statement raised.
"""

from __future__ import annotations

import itertools
import re

from migrator import lazy_re
from migrator.postgres import psql_tokens

# A dollar quote's tag characters: ASCII letters, digits, _ and any non-ASCII character, as psql's lexer. Spelled as
# what they are not, the ASCII rest: a class of huge ranges (or \w) takes ~6 ms to compile at every start, this ~0.3.
TAG_START = psql_tokens.START  # A-Z a-z _ and non-ASCII
TAG_CHAR = psql_tokens.TAG_CHAR  # and 0-9
_NAME = r"[A-Za-z0-9_\x80-\U0010ffff]+"  # psql's variable_char
_VARIABLE = lazy_re.compile(rf":(?:'{_NAME}'|\"{_NAME}\"|{_NAME}|\{{\?)")
# After a closing quote, a newline (only \r inside psql's line) then a quote continues the same literal.
_CONTINUE = lazy_re.compile(r"(?:[ \t\f]|--[^\n\r]*)*\r(?:[ \t\n\r\f]+|--[^\n\r]*\r)*'")
_IN_STRING = {"xq": re.compile(r"'(?!')|''"), "xus": re.compile(r"'(?!')|''"), "xe": re.compile(r"\\.?|'(?!')|''", re.S),
              "xb": re.compile("'"), "xh": re.compile("'")}
_COMMENT = lazy_re.compile(r"/\*|\*+/")
# A line every reading lexes from INITIAL back to INITIAL (the common case, checked fast): no backslash, no
# dollar, double quote, /* or variable, only '...' strings that no letter, digit or & starts, a last -- comment.
_PLAIN = lazy_re.compile(r"(?:[^'\"$\\:/\-\r]|/(?!\*)|-(?!-)|::|:=|(?<![A-Za-z0-9_$&])'[^'\\\r]*'(?!'))*(?:(?<![0-9.][eE])--[^\r]*)?\Z")
# pg_dump 15.14+ writes these two lines; the runner skips them (splitter.RESTRICT) and plan leaves them out.
RESTRICT_LINE = lazy_re.compile(r"\\(?:un)?restrict[ \t]+[A-Za-z0-9]+[ \t]*\r?$")
MAX_STATES = 32

# Client encodings psql lexes by character length (libpq's PQmblen): a lead byte takes the next byte(s) with it,
# and psql's buffer (psqlscan_prepare_buffer) keeps the lead byte and writes 0xFF for each byte it took, ASCII
# (a quote, a backslash) included. The lexer then compares dollar-quote tags byte by byte, so `$é$` and `$ë$`
# (C3 A9 / C3 AB, both C3 FF in BIG5) are one tag to it (attack23x 1). Each pattern is one character (GB18030's
# is four bytes when a digit follows its first), a pattern to stay C-speed on a 5 MB file.
# (BIG5 stands for GBK and UHC too, SJIS for SHIFT_JIS_2004.)
_ANY = rb"[\x00-\xff]"
ENCODINGS = {"UTF8": None, "SJIS": rb"([\x80-\xa0\xe0-\xff])(" + _ANY + b")",
             "BIG5": rb"([\x80-\xff])(" + _ANY + b")",
             "GB18030": rb"([\x80-\xff])([0-9]" + _ANY + rb"{0,2}|" + _ANY + b")",
             "JOHAB": rb"([\x80-\xff])((?<=\x8f)" + _ANY + rb"{1,2}|" + _ANY + b")"}
_CHARACTER = {name: lazy_re.compile(pattern) for name, pattern in ENCODINGS.items() if pattern}
_HIGH = bytes.maketrans(bytes(range(0x80, 0x100)), b"\xff" * 0x80)
_TAKEN = b"\xff" * 256  # (a translation table: every byte a character takes after its first)


def as_lexed(line: str, encoding: str) -> str:
    """The line as psql's lexer holds it in that client encoding: its bytes (one character each, latin-1) with
    every byte a multibyte character takes after its first written 0xFF; as it is in UTF8 (or all ASCII)."""
    if encoding == "UTF8" or line.isascii():
        return line
    parts = _CHARACTER[encoding].split(line.encode("utf-8"))  # [between, first byte, taken, between, ...]
    parts[2::3] = map(bytes.translate, parts[2::3], itertools.repeat(_TAKEN))  # (C speed: no call per character)
    return b"".join(parts).decode("latin-1")


def _takes_ascii(line: str, seen: str) -> bool:
    """A multibyte character of that reading takes an ASCII character (a quote, a space) with it."""
    return line.encode("utf-8").translate(_HIGH) != seen.encode("latin-1").translate(_HIGH)


def _digits(text: str) -> bool:
    """ASCII digits only: psql's lexer takes ٣ (like any byte >= 0x80) for a letter."""
    return text.isascii() and text.isdigit()


_OTHER_KIND = {("xq", None): ("xe", None), ("xqs", "xq"): ("xqs", "xe")}


class Exposed(Exception):
    def __init__(self, line: int, reading: str, what: str):
        super().__init__(what)
        self.line, self.reading, self.what = line, reading, what


# After a file that a byte-swallowing client encoding would leave inside a string, plan writes this line: in
# that reading its quote ends the string, in every other it is a comment, so the next file starts afresh.
CLOSER = "-- ' ends a string psql would read as still open in a client encoding such as BIG5 or SJIS"


def check(text: str) -> bool:
    """Raise Exposed for the first line where some reading shows psql a backslash (or `:name`) outside a literal,
    or where a reading leaves the file inside a comment, identifier or dollar quote, or (whatever the client
    encoding) inside a string. True when only a byte-swallowing client encoding leaves a string open: plan
    then ends the file with CLOSER."""
    states = {(("I", None), False): 0}  # (lexer state, reached through a byte-swallowing encoding): line
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if len(states) == 1 and next(iter(states))[0] == ("I", None) and line.isascii() and _PLAIN.match(line):
            continue  # every reading ends the line where it began
        # Without a backslash on the line, a '...' ends in the same place in both settings: only what kind of
        # string stays open differs, so one reading is lexed and the other kind added (it is reachable).
        stds = (True, False) if "\\" in line else (True,)
        lexed = {"UTF8": line}  # and each encoding that takes an ASCII character of the line or may close a tag
        for encoding in ENCODINGS if not line.isascii() else ():  # (else it reads the same)
            seen = as_lexed(line, encoding)
            if encoding != "UTF8" and ("$" in line or _takes_ascii(line, seen)):
                lexed[encoding] = seen
        encodings = list(lexed)
        new: dict = {}
        restrict = RESTRICT_LINE.match(line)
        ends_of: dict = {}  # (lexer state, std, encoding): its end states (the `via` flag does not change them)
        for (state, via), origin in states.items():
            pinned = _pinned(state)  # a non-ASCII tag: its own encoding's bytes (no statement is sent inside it)
            for std, encoding in ((std, encoding) for std in stds for encoding in (pinned or encodings)):
                reached = via or encoding != "UTF8"
                if state[0] in ("I", "xqs") and restrict:
                    new.setdefault((("I", None), reached), origin)
                    continue
                key = (state, std, encoding)
                if key not in ends_of:
                    seen = lexed.get(encoding) or lexed.setdefault(encoding, as_lexed(line, encoding))
                    start = ("xdolq", state[1][0]) if pinned else state
                    ends_of[key] = {_pin(end, encoding) for end in
                                    _lex(seen, start, std, number, _reading(std, encoding))}
                for end in ends_of[key]:
                    since = origin if end == state else number
                    new.setdefault((end, reached), since)
                    if len(stds) == 1 and end in _OTHER_KIND:
                        new.setdefault((_OTHER_KIND[end], reached), since)
        if len(new) > MAX_STATES:
            raise Exposed(number, "", "reads too many ways depending on standard_conforming_strings and "
                                      "client_encoding")
        states = new
    closer = False
    for (state, via), origin in states.items():
        if state[0] in ("I", "xqs"):
            continue
        if via and state[0] in _IN_STRING:
            closer = True
            continue
        raise Exposed(origin or len(lines), "", "leaves psql inside a quoted string, comment or dollar quote at the "
                                                "end of the file under some standard_conforming_strings or "
                                                "client_encoding")
    return closer


def _pinned(state: tuple) -> list | None:
    return [state[1][1]] if state[0] == "xdolq" and isinstance(state[1], tuple) else None


def _pin(state: tuple, encoding: str) -> tuple:
    """A dollar quote whose tag is not ASCII ends only where that encoding's bytes repeat it."""
    return ("xdolq", (state[1], encoding)) if state[0] == "xdolq" and not state[1].isascii() else state


def _reading(std: bool, encoding: str) -> str:
    parts = ([] if std else ["standard_conforming_strings off"]) + ([] if encoding == "UTF8" else
                                                                  [f"client_encoding {encoding}"])
    return " and ".join(parts)


def _lex(line: str, state: tuple, std: bool, number: int, reading: str) -> set:
    """The states psql's lexer can end the line in, from `state` (a set: psql versions differ)."""
    ends = set()
    work = [(0, state, psql_tokens.ALL)]
    seen = set()
    while work:
        pos, state, versions = work.pop()
        if (pos, state, versions) in seen:
            continue
        seen.add((pos, state, versions))
        kind, arg = state
        if kind == "xqs":
            cont = _CONTINUE.match(line, pos)
            if pos == len(line):  # the line ended right after the quote: the next line may continue it
                ends.add(state)
            elif cont:
                work.append((cont.end(), (arg, None), versions))
            else:
                work.append((pos, ("I", None), versions))
            continue
        if kind in _IN_STRING:
            pattern = _IN_STRING[kind]
            while True:
                m = pattern.search(line, pos)
                if m is None:
                    ends.add(state)
                    break
                pos = m.end()
                if m.group() == "'":
                    work.append((pos, ("xqs", kind), versions))
                    break
            continue
        if kind == "xc":
            depth = arg
            while depth >= 0:
                m = _COMMENT.search(line, pos)
                if m is None:
                    break
                pos = m.end()
                depth += 1 if m.group() == "/*" else -1
            if depth >= 0:
                ends.add(("xc", depth))
            else:
                work.append((pos, ("I", None), versions))
            continue
        if kind in ("xd", "xdolq"):
            close = '"' if kind == "xd" else arg
            end = line.find(close, pos)
            while kind == "xd" and end >= 0 and line.startswith('"', end + 1):
                end = line.find('"', end + 2)
            if end < 0:
                ends.add(state)
            else:
                work.append((end + len(close), ("I", None), versions))
            continue
        # INITIAL: token by token, as each psql version's rules end them
        while True:
            pos = psql_tokens.skip(line, pos)
            if pos >= len(line):
                ends.add(("I", None))
                break
            what, after = psql_tokens.token(line, pos, versions, std)
            if what == "\\":
                raise Exposed(number, reading, "a backslash outside a quoted string: a psql meta-command")
            if what == ":":
                pos = _colon(line, pos, number, reading)
                continue
            if what is None and len(after) == 1:
                pos = next(iter(after))
                continue
            for end, group in after.items():
                work.append((end, what or ("I", None), group))
            break
    return ends


def _colon(line: str, at: int, number: int, reading: str) -> int:
    """Past a `:` token: `::` and `:=` are operators, `:'name'` and `:"name"` psql quotes, `:name` psql replaces."""
    var = _VARIABLE.match(line, at)
    if line.startswith("::", at) or line.startswith(":=", at):
        return at + 2
    if var and var.group()[1] not in "'\"{" and not _digits(var.group()[1:]):
        raise Exposed(number, reading, f"`{var.group()}` outside a quoted string: psql replaces it with "
                                        "the psql variable of that name, which it then reads as input")
    return var.end() if var and var.group()[1] in "'\"" else at + 1
