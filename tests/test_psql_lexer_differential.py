"""The meta-command guard (psql_reading) against the real psql lexer, by a generator (issue 23, attack23r finding 1).

Each case is a line of lexer-relevant tokens (every sequence of up to three from an alphabet, then seeded random
longer files), followed by a probe: a `\\echo` marker that one reading of the lines before hides inside a literal or
comment and another shows to psql. A case plan accepts goes through plan's own text (files.plan_text) into one psql
run against the suite's server; a marker psql echoes is a file the guard read otherwise than psql: the test fails.
psql is the embedded wheel's (18), so this proves the guard for psql 18; other versions' rules are read too
(psql_tokens) and asserted on below by the cases where they differ.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import _bin

from migrator.postgres import files, psql_reading
from migrator.postgres.splitter import SplitError

# What psql's lexer turns on: quotes and their prefixes, dollars, digits, $n, comments, identifier characters,
# operators, backslashes, a carriage return (it ends a -- comment inside psql's line), multibyte letters.
ALPHABET = ["$1", "$", "$$", "$a", "1", "e", "a", "0x", ".", "_", "'", "E'", '"', "U&", "/*", "*/", "-", "--",
            "\\", "\r", "é", ":"]
# A probe hides its marker from the states the guard may think the first line leaves open and shows it to another
# state psql may be in: a literal around the marker (psql inside a literal the guard does not see), the marker then
# a closer (psql outside a literal the guard sees), a closer then a literal (psql inside another literal).
PROBES = ["$$ \\echo {m} $$;", "' \\echo {m} ';", '" \\echo {m} ";', "$a$ \\echo {m} $a$;", "' */ \\echo {m} ';",
          "\\echo {m} */;", "\\echo {m} $$;", "\\echo {m} ';", "' $$ \\echo {m} $$;", "*/ $$ \\echo {m} $$;"]
# Where psql would find a meta-command to run beyond \echo: only harmless ones can form (\e runs this editor).
HARMLESS = {"PSQL_EDITOR": "true", "EDITOR": "true", "VISUAL": "true", "PAGER": "cat", "PSQL_HISTORY": os.devnull}


def _cases():
    for length in (1, 2, 3):
        for tokens in itertools.product(ALPHABET, repeat=length):
            for probe in PROBES:
                yield f"SELECT {''.join(tokens)}\n{probe}\n"
    rng = random.Random(23)
    for _ in range(3000):
        lines = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(2, 9))) for _ in range(rng.randint(1, 3))]
        lines.insert(rng.randint(1, len(lines)), rng.choice(PROBES))
        yield "SELECT " + "\n".join(lines) + "\n"


def _planned(path: Path, text: str) -> str | None:
    """plan's text for the file (as a non-transactional one: fewer statements, the same lines to lex), or None
    where plan refuses it. The guard runs in memory first: most cases never reach a file."""
    try:
        psql_reading.check(text)
        path.write_text(text, encoding="utf-8")
        return files.plan_text(path, in_transaction=False)
    except (psql_reading.Exposed, SplitError):
        return None


@pytest.fixture
def case_file(tmp_path):
    """Where each accepted case is written for plan to read: in memory (tmpfs) where there is one. ~36,000
    rewrites of one file cost ~280 us each on the suite's disk (ext4), ~18 on tmpfs; what plan reads is the same."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path / "0001_case.sql"
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="hcm-lexer-") as folder:
        yield Path(folder) / "0001_case.sql"


def test_no_file_the_guard_accepts_makes_psql_run_a_meta_command(db, tmp_path, case_file):
    planned, texts = [], {}
    for number, case in enumerate(_cases()):
        text = case.replace("{m}", f"M{number}M")
        plan = _planned(case_file, text)
        if plan is not None:
            # one psql for all: plan's \connect (a fresh session per file) costs a connection each and changes
            # nothing psql lexes here (no case sets standard_conforming_strings or client_encoding)
            planned.append(plan.replace(files.FRESH_SESSION + "\n", ""))
            texts[number] = text
    assert len(planned) > 10_000  # the generator does get past the guard
    done = subprocess.run([_bin("psql"), "-X", "-q", "-o", os.devnull, "-d", db.url], input="".join(planned).encode(),
                          capture_output=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, **HARMLESS, "HOME": str(tmp_path)})
    ran = sorted({int(n) for n in re.findall(rb"M([0-9]+)M", done.stdout)})
    # a file psql ends inside a literal shifts the next one: name the file before each marker too
    before = {n: max((m for m in texts if m < n), default=None) for n in ran}
    assert not ran, [f"ran {texts[n]!r} after {texts.get(before[n])!r}" for n in ran[:5]]


@pytest.mark.parametrize("text", [
    "SELECT 1$1$$\n$$ \\echo M $$;\n",  # the finding: a number, a parameter, then $$ (psql 18)
    "SELECT $1$1$$\n$$ \\echo M $$;\n",
    "SELECT $12$3$$\n$$ \\echo M $$;\n",
    "SELECT 1 AS x, $1$1$$\n$$ AS y \\echo M\n$$;\n",
    "SELECT 1e1$$\n$$ \\echo M $$;\n",  # psql 15-16: 1e1 is a number, $$ a quote (17+: one junk token)
    "SELECT $1a$$\n$$ \\echo M $$;\n",  # psql 15-16: $1a is a parameter with junk, $$ a quote
    "SELECT 0x1$$\n$$ \\echo M $$;\n",  # psql 15: 0x is junk, 1 a number, $$ a quote
    "SELECT 1.e5$$\n$$ \\echo M $$;\n",  # psql 15: 1.e5 is a number
    "SELECT 1_0$$\n$$ \\echo M $$;\n",  # psql 15: 1_ is junk, 0 a number
])
def test_a_dollar_quote_after_a_number_or_parameter_in_any_psql_version_is_refused(text):
    with pytest.raises(psql_reading.Exposed):
        psql_reading.check(text)


@pytest.mark.parametrize("text", [
    "SELECT a$1$$, b$$x FROM t;\n",  # $ continues an identifier: no quote opens
    "SELECT price$ FROM t;\n",
    "SELECT $1, $2::int, arr[1:2] FROM t WHERE x = $3;\n",
    "SELECT 1.5, .5e-3, 1..2, 0x1F FROM t;\n",
])
def test_ordinary_sql_with_dollars_and_numbers_is_still_accepted(text):
    assert psql_reading.check(text) is False


# Dollar-quote tags in a client encoding psql lexes by character length (attack23x 1): psql keeps a character's
# first byte and writes 0xFF for the rest, then compares tags byte by byte, so tags that differ in UTF-8 may be one
# tag to it. Tags are drawn at random from blocks of two- and three-byte characters (Latin-1 letters share a lead
# byte, so do kana), in random shapes, and each encoding's psql reads every accepted case.
TAG_BLOCKS = [(0xC0, 0xFF), (0x100, 0x17F), (0x410, 0x44F), (0x3041, 0x3096), (0x4E00, 0x4E40)]
TAG_SHAPES = ["SELECT {a} x {b}; \\echo {m} ; {a};\n", "SELECT {a} x\n{b}; \\echo {m} ; {a};\n",
              "SELECT {a} {b} {a} ' {b}; \\echo {m} ; {a} ';\n", "SELECT {a}\n{b} \\echo {m} {b}\n{a};\n",
              "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS {a}SELECT {b}x{b}{a};\n' \\echo {m} ';\n"]
MULTIBYTE = ["BIG5", "GBK", "UHC", "SJIS", "GB18030", "JOHAB"]


def _tag(rng) -> str:
    low, high = rng.choice(TAG_BLOCKS)
    return "$" + "".join(chr(rng.randint(low, high)) for _ in range(rng.randint(1, 2))) + "$"


def test_dollar_tags_that_psql_reads_as_one_in_a_multibyte_encoding_never_hide_a_meta_command(db, tmp_path, case_file):
    rng = random.Random(231)
    planned, texts = [], {}
    for number in range(600):
        a, b = _tag(rng), _tag(rng)
        text = rng.choice(TAG_SHAPES).format(a=a, b=b, m=f"M{number}M")
        plan = _planned(case_file, text)
        if plan is not None:
            planned.append(plan.replace(files.FRESH_SESSION + "\n", ""))
            texts[number] = text
    assert len(planned) > 200
    for encoding in MULTIBYTE:
        done = subprocess.run([_bin("psql"), "-X", "-q", "-o", os.devnull, "-d", db.url],
                              input="".join(planned).encode(), capture_output=True, cwd=tmp_path, timeout=600,
                              env={**os.environ, **HARMLESS, "HOME": str(tmp_path), "PGCLIENTENCODING": encoding})
        ran = sorted({int(n) for n in re.findall(rb"M([0-9]+)M", done.stdout)})
        assert not ran, (encoding, [texts[n] for n in ran[:5]])


@pytest.mark.parametrize("text", ["SELECT $é$ x $é$, $ë$ y $ë$;\n", "SELECT $あい$ x $あい$ || $あう$ y $あう$;\n",
                                  "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $função$\nSELECT 1\n$função$;\n"])
def test_dollar_tags_psql_reads_alike_or_apart_in_every_encoding_are_still_accepted(text):
    assert psql_reading.check(text) is False
