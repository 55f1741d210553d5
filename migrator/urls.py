"""Connection URLs taken apart without ever echoing their credentials.

`urllib.parse` reads an unencoded `#`, `/` or `?` in a password as the start of the fragment, path or
query, and its errors then quote what it took for a port: part of the password. Here the userinfo is
cut off first (up to the last `@`), checked, and only the rest is parsed; errors never quote it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from migrator import output
from migrator.errors import USAGE, MigratorError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
# One host of a host list: a name, an IPv4 address, a bracketed IPv6 address or a %-encoded socket path; a port.
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9._%~-]*)(?::[0-9]{1,5})?$")
# RFC 3986 userinfo: unreserved, sub-delims, ":" and %XX escapes. Anything else must be encoded.
_USERINFO = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*$")


@dataclass
class Url:
    scheme: str
    user: str | None
    password: str | None
    netloc: str  # hosts and ports, without the credentials
    path: str  # decoded, without the leading /
    query: list[tuple[str, str]] = field(default_factory=list)  # in order; keys may repeat

    def param(self, name: str) -> str | None:
        """The last value of a query key, compared without case (as drivers do)."""
        values = [v for k, v in self.query if k.lower() == name.lower()]
        return values[-1] if values else None


def parse(url: str, origin: str, kind: str, schemes: tuple[str, ...], example: str) -> Url:
    """Split `url` (from setting `origin`); raise a usage error that names the setting, never the password."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() not in schemes:
        shown = f" (scheme {scheme!r})" if sep and _SCHEME.match(scheme) else ""
        raise MigratorError(f"{origin} is not a {kind} URL{shown}; expected {example}", USAGE)
    userinfo, at, hostpart = rest.rpartition("@")
    user = password = None
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        if colon:
            output.register_secret(raw_password)  # hidden even if what follows fails
        if not _USERINFO.match(userinfo):
            raise MigratorError(
                f"{origin}: the user name or password holds characters that must be URL-encoded in a URL "
                f"(@ : / ? # % and spaces; e.g. %23 for #, %40 for @); encode them, or give the password on its "
                f"own (DB_PASSWORD / the secret)", USAGE)
        user = unquote(raw_user) or None
        password = unquote(raw_password) if colon else None
        output.register_secret(password)
    try:
        parts = urlsplit(f"{scheme.lower()}://{hostpart}")
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        raise MigratorError(f"{origin}: the host is not a host name, IP address or [IPv6 address]; expected {example}", USAGE)
    if parts.fragment:
        raise MigratorError(f"{origin} has a #fragment after the host; remove it (a # in a password must be written %23)", USAGE)
    if parts.netloc and not all(_HOST.match(host) for host in parts.netloc.split(",")):
        # Not quoted: without an @, "user:password" stands where the host should.
        raise MigratorError(f"{origin}: the host part is not host[:port] (is the @ after user:password missing, or a "
                            f"character not URL-encoded?); expected {example}", USAGE)
    # Drivers take both & and ; between options (pymongo does), so both separate them here too.
    query = parse_qsl(parts.query.replace(";", "&"), keep_blank_values=True)
    return Url(scheme.lower(), user, password, parts.netloc, unquote(parts.path.lstrip("/")), query)
