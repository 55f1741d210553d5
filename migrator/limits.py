"""The run's time and size limits from their options and variables: DDL lock and statement timeouts, the lock
retry budget, the backfill's batch limit, the read timeouts (database, Secrets Manager), the rewrite threshold."""

from __future__ import annotations

import re

from migrator import durations
from migrator.env import Env
from migrator.errors import USAGE, MigratorError
from migrator.targets import DdlLimits

THRESHOLD_ROWS = 10_000  # live rows above which a rewrite under a blocking lock is refused (postgres/rewrites.py)

_ASCII_NUMBER = re.compile(r"[0-9]{1,9}")  # str.isdigit() would take '²'

DEFAULT_READ_TIMEOUT = 60.0  # seconds; catalog reads answer in well under that


def read_timeout(env: Env) -> float:
    """DB_READ_TIMEOUT: seconds a read-only command (status, plan, doctor) waits for any answer; 0: for ever."""
    value, origin = env.get("DB_READ_TIMEOUT")
    if value is None:
        return DEFAULT_READ_TIMEOUT
    if not re.fullmatch(r"[0-9]{1,6}(\.[0-9]+)?", value.strip()):
        raise MigratorError(f"{origin}: {value!r} is not a number of seconds; use e.g. 60, or 0 to wait for ever", USAGE)
    return float(value)


DEFAULT_SECRETS_READ_TIMEOUT = 10.0  # seconds; Secrets Manager answers in milliseconds


def secrets_read_timeout(env: Env) -> float:
    """SECRETS_READ_TIMEOUT: seconds each Secrets Manager request may wait for its answer (two tries)."""
    value, origin = env.get("SECRETS_READ_TIMEOUT")
    if value is None:
        return DEFAULT_SECRETS_READ_TIMEOUT
    if not re.fullmatch(r"[0-9]{1,6}(\.[0-9]+)?", value.strip()) or float(value) == 0:
        raise MigratorError(f"{origin}: {value!r} is not a number of seconds above 0; use e.g. 10", USAGE)
    return float(value)


def resolve_ddl_limits(lock_timeout: str | None, statement_timeout: str | None, env: Env,
                       lock_retry_budget: str | None = None) -> DdlLimits:
    """--ddl-lock-timeout / DB_LOCK_TIMEOUT, --statement-timeout / DB_STATEMENT_TIMEOUT and --lock-retry-budget /
    DB_LOCK_RETRY_BUDGET (PostgreSQL units; 0 = off)."""
    limits, origins = DdlLimits(), {}
    for attr, option, option_name, variable in (
        ("lock_timeout", lock_timeout, "--ddl-lock-timeout", "DB_LOCK_TIMEOUT"),
        ("statement_timeout", statement_timeout, "--statement-timeout", "DB_STATEMENT_TIMEOUT"),
        ("lock_retry_budget", lock_retry_budget, "--lock-retry-budget", "DB_LOCK_RETRY_BUDGET"),
    ):
        value, origin = (option, option_name) if option else env.get(variable)
        if value is None:
            continue
        try:
            setattr(limits, attr, durations.pg_duration(value, "s" if attr == "lock_retry_budget" else ""))
        except ValueError as exc:
            raise MigratorError(f"{origin}: {exc}", USAGE)
        origins[attr] = origin
    limits.notes = _notes(limits, origins)
    value, origin = env.get("BACKFILL_MAX_BATCHES")
    if value:
        if not _ASCII_NUMBER.fullmatch(value.strip()) or int(value) == 0:
            raise MigratorError(f"{origin}: {value!r} is not a number of batches; e.g. 100000 (the most times a "
                                "`-- backfill: batch` statement runs)", USAGE)
        limits.backfill_max_batches = int(value)
    return limits


def _notes(limits: DdlLimits, origins: dict) -> list[str]:
    """What the run says of its DDL limits (config, migrate), and a per-try lock_timeout not below statement_timeout
    clamped to half of it: the statement_timeout would end each lock wait first, as a slow statement (no retry, no
    blocker named). 0 is kept (documented: no bound), with a note: an old DB_LOCK_TIMEOUT=0 meant "wait", and it
    lifts the one bound on the application's stall; refusing a documented value would break a quiet window's run."""
    lock, statement = (durations.pg_seconds(limits.lock_timeout), durations.pg_seconds(limits.statement_timeout))
    lock_origin = origins.get("lock_timeout", "default")
    if lock == 0:
        return [f"lock_timeout 0 ({lock_origin}): each try waits for its locks with no bound, and the application's "
                "queries on the table queue behind that wait for as long as its blocker lives (no lock retry either); "
                "unset it for the 300ms default unless this is a quiet window"]
    if 0 < statement <= lock:
        clamped = f"{max(1, round(statement * 500))}ms"
        note = (f"lock_timeout {durations.with_unit(limits.lock_timeout, 'ms')} ({lock_origin}) is not below "
                f"statement_timeout {durations.with_unit(limits.statement_timeout, 'ms')} "
                f"({origins.get('statement_timeout', 'default')}): each try waits at most {clamped} for its locks "
                "instead, so a lock wait is retried with its blocker named rather than ended as a slow statement")
        limits.lock_timeout = clamped
        return [note]
    return []


def resolve_rewrite_threshold(option: int | None, env: Env) -> int:
    """--rewrite-threshold-rows / REWRITE_THRESHOLD_ROWS: above this many live rows a rewrite or scan under a lock
    that stops the application is refused (postgres/rewrites.py); default 10,000."""
    if option is not None:
        return option
    value, origin = env.get("REWRITE_THRESHOLD_ROWS")
    if not value:
        return THRESHOLD_ROWS
    if not _ASCII_NUMBER.fullmatch(value.strip()):
        raise MigratorError(f"{origin}: {value!r} is not a number of rows; e.g. 10000 (0 refuses on any non-empty "
                            "table)", USAGE)
    return int(value.strip())
