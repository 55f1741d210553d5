"""Split a .sql file into statements exactly where psql would, with each statement's line.

Modelled on psql's lexer (src/fe_utils/psqlscan.l): a `;` ends a statement only outside quotes,
comments, dollar quotes and parentheses, and outside the `BEGIN ... END` body of a
`CREATE [OR REPLACE] FUNCTION|PROCEDURE ... BEGIN ATOMIC`; text after the last `;` is a statement
when it holds more than comments (psql sends it at end of file). A regular expression finds only
the characters that matter, so a 5 MB file splits in well under a second; sqlparse (yoyo's
splitter) has a token limit and needs seconds.

psql meta-commands and `COPY ... FROM stdin` cannot run through a driver: they are refused with
their line. pg_dump 15.14+'s `\\restrict KEY` / `\\unrestrict KEY` lines only stop psql from running
meta-commands, which the runner never runs: they are accepted and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from migrator import lazy_re
from migrator.postgres import client_encoding, psql_reading
from migrator.postgres.psql_reading import TAG_CHAR, TAG_START  # (sessions.py's and files.py's too)
from migrator.postgres.psql_tokens import NOT_AFTER_IDENT, NOT_BEFORE_IDENT, ident_char

# What can change the lexer's state; everything between matches is plain text.
_SPECIAL = rf"""--|/\*|'|"|{NOT_AFTER_IDENT}\$(?:{TAG_START}{TAG_CHAR}*)?\$|;|\(|\)|\\"""
FAST = re.compile(_SPECIAL)
# Inside CREATE FUNCTION/PROCEDURE, words are tracked too (BEGIN ATOMIC ... END).
# (?i:) only on the words: folding case over the tag class is slow to compile.
WORDS = re.compile(_SPECIAL + rf"|{NOT_AFTER_IDENT}(?i:begin|case|end){NOT_BEFORE_IDENT}")
# Between words: blanks and comments (`CREATE /* c */ FUNCTION` is a function too).
_GAP = r"(?:\s|--[^\r\n]*|/\*.*?\*/)+"
ATOMIC = re.compile(rf"{_GAP}atomic{NOT_BEFORE_IDENT}", re.IGNORECASE | re.DOTALL)  # (after a counted BEGIN)
ROUTINE = re.compile(rf"create{_GAP}(?:or{_GAP}replace{_GAP})?(?:function|procedure){NOT_BEFORE_IDENT}",
                     re.IGNORECASE | re.DOTALL)
# A file's own `SET standard_conforming_strings`: psql (and the server) then read '\'' as an escape.
CONFORMING = lazy_re.compile(r"(?:set|reset)\b(?:\s+(?:session|local))?\s+standard_conforming_strings\b"
                        r"(?:\s*(?:=|\bto\b)\s*'?(\w+)'?)?", re.IGNORECASE)
COPY_STDIN = lazy_re.compile(r"copy\b.*\bfrom\s+stdin\b", re.IGNORECASE | re.DOTALL)
# STDIN anywhere (a keyword cannot be quoted or escaped): a COPY FROM STDIN psql alone sees is refused too.
STDIN_WORD = lazy_re.compile(f"{NOT_AFTER_IDENT}stdin{NOT_BEFORE_IDENT}", re.IGNORECASE)
COPY_STDOUT = lazy_re.compile(r"copy\b.*\bto\s+stdout\b", re.IGNORECASE | re.DOTALL)
RESTRICT = re.compile(r"\\(?:un)?restrict[ \t]+[A-Za-z0-9]+[ \t]*\r?(?:\n|$)")  # pg_dump's key: letters, digits
# PostgreSQL's lexer ends a `--` comment at \r as well as \n (files saved with old Mac line ends).
BLANK = lazy_re.compile(r"(?:\s+|--[^\r\n]*)*")
COMMENT_END = lazy_re.compile(r"[\r\n]")


# A control character other than tab, line feed, form feed and carriage return (Unicode's Cc): a NUL psql drops with
# the rest of its line; the others a terminal or pager acts on, so what a reviewer reads of the file (`cat`, `git
# diff`, a saved plan in `less -R`) is not what runs (ESC[8m conceals a statement, attack23w 9). As the Mongo side's
# patch output is escaped, a file holding one is refused; in a string it can be written as an escape (E'\x1b').
CONTROL = lazy_re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def _control_said(text: str, at: int) -> str:
    column = at - max(text.rfind("\n", 0, at), text.rfind("\r", 0, at))
    if text[at] == "\0":
        return f"holds a NUL byte (U+0000, column {column}), which psql drops with the rest of its line (the server " \
               "refuses it); remove it"
    return (f"holds control character U+{ord(text[at]):04X} (column {column}), which a terminal or pager acts on (it "
            "can hide or redraw what a reviewer reads of the file, in `plan`, `cat` or `git diff`); remove it, or "
            "write it as an escape in a string (E'\\x1b', chr(27))")


def newlines(text: str, start: int = 0, end: int | None = None) -> int:
    """Line breaks in text[start:end]: \n, \r\n and a lone \r each end a line (as the checksum counts them)."""
    end = len(text) if end is None else end
    count = text.count("\n", start, end)
    if text.find("\r", start, end) >= 0:  # only the slice: this runs once per statement of a 5 MB file
        count += text.count("\r", start, end) - text.count("\r\n", start, end)
    return count


@dataclass(frozen=True)
class Statement:
    text: str  # as sent to the server, from its first token to its `;` (if any)
    line: int  # 1-based line of its first token in the file
    offset: int  # character offset of its first token in the file
    terminated: bool = True  # False: the file's last statement, without a final `;`
    # a `;` outside parentheses stayed inside it by psql's BEGIN ... END count of a `begin` that opens no BEGIN
    # ATOMIC body (a routine NAMED begin): the server may parse several statements out of it (server_statements.py)
    swallowed: bool = field(default=False, kw_only=True)

    def line_at(self, position: int | None) -> int:
        """The file's line of a server error position (1-based characters into the statement)."""
        if not position:
            return self.line
        return self.line + newlines(self.text, 0, max(0, position - 1))


class SplitError(ValueError):
    """A construct the runner cannot run; `line` is where it starts, `message` says what to do."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def split(text: str) -> list[Statement]:
    statements: list[Statement] = []
    control = CONTROL.search(text)
    if control:
        raise SplitError(newlines(text, 0, control.start()) + 1, _control_said(text, control.start()))
    pos, start, depth, begin_depth, swallowed, misread = 0, None, 0, 0, False, False
    conforming = True  # standard_conforming_strings, as the file sets it
    pattern = FAST
    line, line_pos = 1, 0  # line number of `line_pos`, advanced lazily

    def line_of(offset: int) -> int:
        nonlocal line, line_pos
        line += newlines(text, line_pos, offset)
        line_pos = offset
        return line

    def begin_statement(at: int) -> None:
        nonlocal start, pattern
        start = at
        pattern = WORDS if ROUTINE.match(text, at) else FAST

    def end_statement(end: int, terminated: bool) -> None:
        nonlocal start, depth, begin_depth, pattern, conforming, swallowed, misread
        body = text[start:end]
        if body == ";":  # an empty statement (`;;`, a lone `;`): psql sends nothing, nor does the runner
            start, pattern = None, FAST
            return
        statement = Statement(body, line_of(start), start, terminated, swallowed=swallowed and misread)
        swallowed = misread = False
        _refuse_copy(statement)
        if client_encoding.names(body):  # (the server would read what follows otherwise: attack23x 4)
            raise SplitError(statement.line, client_encoding.REFUSED)
        setting = sets_conforming(body)
        if setting is not None:
            conforming = setting
        statements.append(statement)
        start, depth, begin_depth, pattern = None, 0, 0, FAST

    length = len(text)
    while True:
        if start is None:
            blank = BLANK.match(text, pos).end()
            if blank >= length:
                break
            if not text.startswith("/*", blank):
                if text.startswith("\\", blank):
                    restrict = RESTRICT.match(text, blank)
                    if restrict and (blank == 0 or text[blank - 1] == "\n"):
                        pos = restrict.end()
                        continue
                begin_statement(blank)
            pos = blank
        match = pattern.search(text, pos)
        if match is None:
            if start is not None and text[start:].strip():
                end_statement(length, terminated=False)
            break
        token = match.group()
        at = match.start()
        if start is None and token != "/*":
            begin_statement(at)
        pos = match.end()
        if token == "--":
            newline = COMMENT_END.search(text, pos)
            pos = length if newline is None else newline.end()
        elif token == "/*":
            pos = _skip_block_comment(text, pos, lambda: line_of(at))
        elif token == "'":
            pos = _skip_string(text, at, not conforming or _backslash_escapes(text, at), lambda: line_of(at))
        elif token == '"':
            end = text.find('"', pos)
            while end >= 0 and text.startswith('"', end + 1):
                end = text.find('"', end + 2)
            if end < 0:
                raise SplitError(line_of(at), "unterminated quoted identifier (\") starting here")
            pos = end + 1
        elif token[0] == "$":
            end = text.find(token, pos)
            if end < 0:
                raise SplitError(line_of(at), f"unterminated dollar-quoted string ({token}) starting here")
            pos = end + len(token)
        elif token == "(":
            depth += 1
        elif token == ")":
            depth = max(0, depth - 1)
        elif token == ";":
            if depth == 0 and begin_depth == 0:
                end_statement(pos, terminated=True)
            elif depth == 0:
                swallowed = True
        elif token == "\\":
            raise SplitError(line_of(at), _meta_command_message(text, at))
        elif depth == 0:  # BEGIN / CASE / END inside CREATE FUNCTION|PROCEDURE, as psql counts them
            word = token.lower()
            if word == "begin" or (word == "case" and begin_depth > 0):
                begin_depth += 1
                misread = misread or word == "begin" and not ATOMIC.match(text, pos)
            elif word == "end" and begin_depth > 0:
                begin_depth -= 1
    _refuse_other_readings(text)
    return statements


def sets_conforming(text: str) -> bool | None:
    """What a statement's own `SET/RESET standard_conforming_strings` makes it (True: on), None if it is none."""
    setting = CONFORMING.match(text)
    return None if setting is None else (setting[1] or "on").lower() in ("on", "true", "yes", "1", "default")


def _refuse_other_readings(text: str) -> None:
    """Refuse what psql could read as a meta-command under another standard_conforming_strings or
    client_encoding than the file seems to have (see psql_reading: a file can change both unseen). Every file
    is read: even without a backslash, where psql's lexer and this splitter disagree (1$$, /* a /*/) psql
    can end a file inside a literal and read the next file of a plan shifted."""
    stdin = STDIN_WORD.search(text)
    if stdin:
        raise SplitError(newlines(text, 0, stdin.start()) + 1, "names STDIN: psql reads the lines after a COPY ... "
                         "FROM STDIN as data and what follows them afresh, so in a file whose strings read another way "
                         "under another standard_conforming_strings it could hide a meta-command; write the rows as "
                         "INSERT statements, and STDIN nowhere in the file (comments and strings included)")
    try:
        psql_reading.check(text)
    except psql_reading.Exposed as exc:
        when = (f" when psql reads it with {exc.reading} (a file can set either unseen)" if exc.reading else "")
        raise SplitError(exc.line, f"{exc.what}{when}, and `plan | psql` must run nothing but SQL; write backslashes "
                                   "inside E'...' or $$...$$ strings, a quote inside '...' as '', and `:name` as "
                                   "`: name`") from None


# What a literal's reading can hide in: comments, quoted identifiers, dollar quotes, and the quotes themselves.
_LITERALS = re.compile(rf"""--|/\*|'|"|{NOT_AFTER_IDENT}\$(?:{TAG_START}{TAG_CHAR}*)?\$""")


def backslash_literal(text: str) -> int | None:
    """The offset of the first plain '...' literal (no E before it) holding a backslash, read as the splitter and
    pglast read it (standard_conforming_strings on), or of one left unterminated; None when there is none. With the
    setting off the server reads such a text otherwise (the backslash escapes a quote): nowhere else can the two
    readings part, so without one the text means the same either way."""
    pos = 0
    while (match := _LITERALS.search(text, pos)) is not None:
        token, at = match.group(), match.start()
        if token == "--":
            newline = COMMENT_END.search(text, match.end())
            pos = len(text) if newline is None else newline.end()
        elif token == "/*":
            try:
                pos = _skip_block_comment(text, match.end(), lambda: 0)
            except SplitError:
                return None
        elif token == '"':
            end = text.find('"', match.end())
            pos = len(text) if end < 0 else end + 1  # ("" inside one: two names back to back, read alike)
        elif token == "'":
            escapes = _backslash_escapes(text, at)
            try:
                pos = _skip_string(text, at, escapes, lambda: 0)
            except SplitError:
                return at
            if not escapes and "\\" in text[at:pos]:
                return at
        else:
            end = text.find(token, match.end())
            pos = len(text) if end < 0 else end + len(token)
    return None


def _backslash_escapes(text: str, quote: int) -> bool:
    """E'...' (and e'...') strings take backslash escapes; a plain '...' does not (standard_conforming_strings)."""
    return quote > 0 and text[quote - 1] in "eE" and (quote < 2 or not ident_char(text[quote - 2]))


def _skip_string(text: str, quote: int, escapes: bool, line) -> int:
    pos = quote + 1
    while True:
        end = text.find("'", pos)
        if end < 0:
            raise SplitError(line(), "unterminated quoted string (') starting here")
        if escapes:
            backslashes = 0
            while text[end - 1 - backslashes] == "\\":
                backslashes += 1
            if backslashes % 2:
                pos = end + 1
                continue
        if text.startswith("'", end + 1):
            pos = end + 2
            continue
        continued = _CONTINUE.match(text, end + 1)
        if continued:  # the same literal, read in the same way (E'x'<newline>'\'' is one E string)
            pos = continued.end()
            continue
        return end + 1


# After a closing quote, whitespace holding a newline (comments allowed) then a quote continues the same literal,
# in its mode (scan.l's quotecontinue).
_CONTINUE = lazy_re.compile(r"(?:[ \t\f]|--[^\n\r]*)*[\n\r](?:[ \t\n\r\f\v]+|--[^\n\r]*[\n\r])*'")


def _skip_block_comment(text: str, pos: int, line) -> int:
    nesting = 1
    while nesting:
        close = text.find("*/", pos)
        if close < 0:
            raise SplitError(line(), "unterminated /* comment starting here")
        opened = text.find("/*", pos, close)
        if opened >= 0:
            nesting += 1
            pos = opened + 2
        else:
            nesting -= 1
            pos = close + 2
    return pos


def _meta_command_message(text: str, at: int) -> str:
    command = re.match(r"\\[A-Za-z!?.;:]*", text[at:at + 40]).group() or "\\"
    if command == "\\.":
        return "a `\\.` line ends COPY FROM stdin data; write the rows as INSERT statements instead"
    return (f"psql meta-command {command} cannot run here (the runner sends SQL only, as a driver does); "
            "write it as SQL (e.g. \\set -> a literal value, \\i -> a migration of its own, \\connect -> "
            "a separate database target)")


# A comment between FROM and STDIN still means COPY FROM STDIN (psql then reads the lines after it as data,
# up to a `\.` line, and lexes what follows from scratch): comments are blanked before the check.
_COMMENTS = lazy_re.compile(r"--[^\r\n]*|/\*.*?\*/", re.DOTALL)


def _refuse_copy(statement: Statement) -> None:
    text = _COMMENTS.sub(" ", statement.text) if statement.text[:4].lower() == "copy" else statement.text
    if COPY_STDIN.match(text):
        raise SplitError(statement.line, "COPY ... FROM stdin needs psql to send the data lines that follow; "
                                         "write the rows as INSERT statements (or COPY FROM a file on the server)")
    if COPY_STDOUT.match(text):
        raise SplitError(statement.line, "COPY ... TO stdout prints data, which a migration cannot do; remove it")
