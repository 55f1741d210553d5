"""Regular expressions compiled when first used. A few (a class up to U+10FFFF, a long IGNORECASE alternation)
take milliseconds each to compile: a command that reads no migration file (a no-op migrate, status, --help)
should not pay for them at import."""

from __future__ import annotations

import re

_FORWARDED = ("match", "fullmatch", "search", "finditer", "findall", "sub", "subn", "split", "pattern", "flags",
              "groups", "groupindex")


class LazyPattern:
    """re.compile(pattern, flags) on first use; then its methods sit on the instance, as fast as the pattern's."""

    def __init__(self, pattern: str, flags: int = 0):
        self._source = (pattern, flags)

    def __getattr__(self, name: str):
        if name == "_source":
            raise AttributeError(name)
        compiled = re.compile(*self._source)
        for attribute in _FORWARDED:
            setattr(self, attribute, getattr(compiled, attribute))
        return getattr(compiled, name)


def compile(pattern: str, flags: int = 0) -> LazyPattern:  # noqa: A001 (re.compile's drop-in)
    return LazyPattern(pattern, flags)
