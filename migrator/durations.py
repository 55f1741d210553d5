"""Durations the user gives (timeouts, waits), checked where they are read: finite, not negative, and within
what PostgreSQL accepts for lock_timeout and statement_timeout (INT_MAX milliseconds, about 24.8 days).

The runner's own waits (seconds) share that bound: no wait is meant to be longer, and a larger number
(1e400, 99999999999) would otherwise overflow later, in a driver or a timer, as "unexpected".
"""

from __future__ import annotations

import math
import re

MAX_MS = 2_147_483_647  # PostgreSQL's limit for an integer setting in milliseconds (INT_MAX)
MAX_SECONDS = MAX_MS // 1000
_BOUND = f"at most {MAX_MS} ms, about 24 days"
# PostgreSQL's units for a time setting whose base unit is the millisecond (no unit: milliseconds).
_UNIT_MS = {"us": 0.001, "ms": 1, "": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_PG_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s|min|h|d)?", re.ASCII)


def pg_duration(value: str, default_unit: str = "") -> str:
    """A lock_timeout / statement_timeout as PostgreSQL takes it (`5s`, `500ms`, `10min`, `0`), spaces removed;
    ValueError saying what is wrong. `default_unit` "s": the runner's own duration (the lock retry budget), a bare
    number in seconds, never sent to the server (so no rounding to its milliseconds)."""
    match = _PG_DURATION.fullmatch(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a duration; use PostgreSQL units, e.g. 5s, 500ms, 10min, or 0 for none")
    # PostgreSQL rounds to whole milliseconds (rint), then refuses what does not fit an int.
    ms = float(match[1]) * _UNIT_MS[match[2] or default_unit]
    if round(ms) > MAX_MS:
        raise ValueError(f"{value!r} is longer than PostgreSQL accepts ({_BOUND}); use a shorter one, or 0 for none")
    if ms > 0 and round(ms) == 0 and not default_unit:
        raise ValueError(f"{value!r} rounds to 0 ms on the server, which means no limit; use at least 1ms, or 0 "
                         "for none")
    return value.strip().replace(" ", "")


def pg_milliseconds(shown: str) -> float:
    """A time setting as the server shows it (SHOW statement_timeout: `0`, `500ms`, `5s`, `2min`, `1h`), in ms."""
    match = _PG_DURATION.fullmatch(shown.strip())
    if not match:
        raise ValueError(f"{shown!r} is not a duration PostgreSQL shows")
    return float(match[1]) * _UNIT_MS[match[2] or ""]


# A number as written with ASCII digits (float() also takes '５', '1_0' and ' nan').
_NUMBER = re.compile(r"\s*\+?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*", re.ASCII)


def seconds(value, *, zero: bool) -> float:
    """A number of seconds: finite, from 0 (`zero`) or above 0, at most MAX_SECONDS; ValueError otherwise."""
    try:
        number = float(value) if not isinstance(value, str) or _NUMBER.fullmatch(value) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    low = "from 0" if zero else "above 0"
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero) or number > MAX_SECONDS:
        raise ValueError(f"{value!r} is not a number of seconds {low} up to {MAX_SECONDS} (about 24 days)")
    return number


def pg_seconds(value: str, default_unit: str = "") -> float:
    """A checked PostgreSQL duration in seconds ('500ms' -> 0.5); a bare number is in `default_unit` (lock_timeout's
    and statement_timeout's unit, milliseconds, when none is given)."""
    number, unit = _PG_DURATION.fullmatch(value.strip()).groups()
    return float(number) * _UNIT_MS[unit or default_unit] / 1000


def with_unit(value: str, default_unit: str) -> str:
    """A duration as given, a bare number with the unit it is read in (`300` -> `300ms` for lock_timeout, `300s`
    for the lock retry budget), so `config` never shows a number whose unit the reader must guess."""
    match = _PG_DURATION.fullmatch(value.strip())
    return f"{match[1]}{default_unit or 'ms'}" if match and not match[2] else value


def seconds_text(seconds: float) -> str:
    """A duration the runner measured, in words: `330 ms`, `2.5 s`, `5 min 3 s`."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    return f"{int(seconds // 60)} min" + (f" {int(seconds % 60)} s" if int(seconds % 60) else "")
