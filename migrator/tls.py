"""TLS for both stores: the CA bundle, and the rule that nothing may quietly turn verification off.

PostgreSQL: a CA bundle means `sslmode=verify-full` with it, and a URL asking for less is refused.
Without one, a remote server still gets `sslmode=require` (encrypted, not verified) and a warning;
local servers (a socket, localhost) keep libpq's default.
MongoDB: with a CA bundle, no URL or secret option may switch certificate or host-name checks off.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from migrator import source_files
from migrator.env import NotRegularFile, read_regular_file
from migrator.errors import USAGE, MigratorError

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}
PG_WEAK_MODES = {"disable", "allow", "prefer"}
# Mongo URI options that turn checks off when true (pymongo and mongosh spell them the same).
MONGO_INSECURE = ("tlsInsecure", "tlsAllowInvalidCertificates", "tlsAllowInvalidHostnames",
                  "sslAllowInvalidCertificates", "sslAllowInvalidHostnames")
# The one spelling that lets CA_BUNDLE_OPTIONAL run without a bundle: a manifest must say it in words.
INSECURE_SETTING, INSECURE_VALUE = "DB_TLS_INSECURE", "unverified"
RDS_BUNDLE_URL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
# The certificate and key files a driver opens, named in a URL (a CRL folder, sslcrldir, is meant to be one).
PG_FILE_PARAMS = ("sslrootcert", "sslcert", "sslkey", "sslcrl")
MONGO_FILE_PARAMS = ("tlsCAFile", "tlsCertificateKeyFile", "tlsCRLFile")


def resolve_ca_bundle(option: str | None, env, dotenv_trusted: bool = True) -> tuple[str | None, str | None]:
    """The CA bundle for both stores: (absolute path, origin), or (None, None). It must be a readable file.
    `dotenv_trusted` False: the real environment (or the command line) names the server, so its TLS trust comes from
    there too; a `.env` bundle would choose which CA authenticates it (attack23x 3)."""
    path, origin = (option, "--ca-bundle") if option else env.get("CA_BUNDLE")
    if path and not option and not dotenv_trusted and "(.env)" in origin:
        env.note(f"note: {origin.split()[0]} (.env) ignored: the real environment names the server, and the CA that "
                 "verifies it comes from there too (CA_BUNDLE, PGSSLROOTCERT, ~/.postgresql/root.crt); set it there")
        path = None
    if not path:
        return None, None
    file = Path(path)
    if not option and not file.exists() and truthy(env.value("CA_BUNDLE_OPTIONAL")):
        # The Job mounts the bundle from an optional ConfigMap. Absent, it would send the password to a
        # server nobody verified: only where the manifest also says so in words (attack 23 #4).
        # Only the real environment (the manifest) may say it: a .env shipped in a repository must not.
        view, where = env.source((INSECURE_SETTING,))
        insecure, insecure_origin = view.get(INSECURE_SETTING) if where == "environment" else (None, None)
        if insecure != INSECURE_VALUE:
            said = f" ({insecure_origin} is {insecure!r})" if insecure else ""
            if where == ".env":
                said = f" ({INSECURE_SETTING} in .env does not count: only the real environment may turn it off)"
            raise MigratorError(f"CA bundle {path} (CA_BUNDLE) not found, and CA_BUNDLE_OPTIONAL alone does not allow "
                                f"unverified TLS{said}; create the ConfigMap with the bundle (README, \"The CA bundle\"), "
                                f"or set {INSECURE_SETTING}={INSECURE_VALUE} to run without verifying the server", USAGE)
        env.note(f"warning: INSECURE TLS: CA bundle {path} (CA_BUNDLE) is not there and {INSECURE_SETTING}={INSECURE_VALUE} "
                 f"({insecure_origin}) with CA_BUNDLE_OPTIONAL: the server's certificate is NOT verified, the "
                 "password goes to whoever answers; create the ConfigMap (README, \"The CA bundle\")")
        return None, None
    try:
        head = read_regular_file(file, 1 << 20)  # a bundle is ~200 KiB; never read a huge file whole
    except NotRegularFile as exc:  # a FIFO would hang the read, a device never end: it is there, just not a file
        raise MigratorError(f"CA bundle {path} ({origin}) is {exc}; point it at the PEM bundle file ({RDS_BUNDLE_URL})",
                            USAGE)
    except FileNotFoundError:
        unverified = "" if option else (f"; only to run without verifying the server, set CA_BUNDLE_OPTIONAL=true "
                                        f"and {INSECURE_SETTING}={INSECURE_VALUE}")
        raise MigratorError(f"CA bundle {path} ({origin}) not found; download the RDS bundle ({RDS_BUNDLE_URL}) "
                            f"or fix the path (the Job: create the ConfigMap hcm-db-ca){unverified}", USAGE)
    except OSError as exc:
        raise MigratorError(f"CA bundle {path} ({origin}) cannot be read ({exc.strerror}); fix its permissions", USAGE)
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise MigratorError(f"CA bundle {path} ({origin}) holds no PEM certificate; use the PEM bundle ({RDS_BUNDLE_URL})", USAGE)
    return str(file.resolve()), origin


def _regular_files(paths: dict[str, str | None], where: str) -> None:
    """Each certificate or key file a URL names is a regular file, if it exists (a FIFO would hang the driver's
    open, a device its read); an absent one the driver names itself, as it does libpq's `sslrootcert=system`."""
    for name, path in paths.items():
        try:
            kind = source_files.not_regular(os.stat(path).st_mode) if path else None
        except (OSError, ValueError):
            continue
        if kind:
            raise MigratorError(f"{where} names {name}={source_files.shown(path)}, which is {kind}; point it at the "
                                "PEM file", USAGE)


def is_local(host: str | None) -> bool:
    """A socket folder, localhost, or a loopback address literal (a name such as 127.db.example is a remote host)."""
    if host is None or host.startswith("/") or host.lower() in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _all_local(host: str | None, params: dict[str, str]) -> bool:
    """Local only if every host libpq may use is: the setting, a ?host= list, and ?hostaddr= (which wins)."""
    if params.get("hostaddr"):
        return all(is_local(h.strip()) for h in params["hostaddr"].split(","))
    hosts = [host] if host else []
    hosts += [h.strip() for h in params.get("host", "").split(",") if h.strip()]
    return all(is_local(h) for h in hosts)


def postgres_tls(params: dict[str, str], host: str | None, url_origin: str | None,
                 bundle: str | None, bundle_origin: str | None) -> tuple[str, list[str]]:
    """Set sslmode (and sslrootcert) in `params`; return (the TLS mode in words, warnings)."""
    mode = params.get("sslmode")
    where = url_origin or "the settings"
    _regular_files({name: params.get(name) for name in PG_FILE_PARAMS}, where)
    if bundle:
        if mode and mode != "verify-full":
            raise MigratorError(f"{where} asks for sslmode={mode}, which would not verify the server against the CA "
                                f"bundle ({bundle_origin}); remove sslmode from it (verify-full is used)", USAGE)
        if params.get("sslrootcert") and Path(params["sslrootcert"]).resolve() != Path(bundle):
            raise MigratorError(f"{where} names sslrootcert={params['sslrootcert']}, another CA than the bundle "
                                f"({bundle_origin}); remove one of them", USAGE)
        params.update(sslmode="verify-full", sslrootcert=bundle)
        return f"verify-full with {bundle} ({bundle_origin})", []
    if _all_local(host, params):
        return f"sslmode={mode} ({where})" if mode else "libpq default (local server)", []
    operator = os.environ.get("PGSSLMODE")
    if VERIFYING.get(operator, 0) > VERIFYING.get(mode, 0):
        if mode:  # the operator's own verification, never weakened (attack23x 2)
            raise MigratorError(f"{where} asks for sslmode={mode}, weaker than PGSSLMODE={operator} (environment); "
                                "remove one of them", USAGE)
        params["sslmode"] = mode = operator
        where = "PGSSLMODE (environment)"
    if mode in PG_WEAK_MODES:
        return f"sslmode={mode} ({where})", [
            f"warning: TLS to PostgreSQL at {host} is not required (sslmode={mode} in {where}): the password may "
            "travel in clear; set CA_BUNDLE for verify-full"]
    if mode in VERIFYING:
        return f"sslmode={mode} ({where}): server verified against {_root_cert(params) or 'libpq root.crt'}", []
    if mode and mode != "require":
        return f"sslmode={mode} ({where})", []
    params["sslmode"] = "require"
    root = _root_cert(params)
    said = f"sslmode=require ({where})" if mode else "require"
    if root:  # libpq checks the chain when a root certificate is there, as verify-ca does
        return f"{said}: encrypted, certificate chain checked against {root}, host name NOT checked", [
            f"warning: TLS to PostgreSQL at {host} checks the certificate chain ({root}) but not the host name; set "
            "sslmode=verify-full (PGSSLMODE) or CA_BUNDLE"] if not mode else []
    return f"{said}: encrypted, server NOT verified", [
        f"warning: TLS to PostgreSQL at {host} is encrypted but the server is not verified; "
        "set CA_BUNDLE (e.g. the RDS bundle) for verify-full"] if not mode else []


VERIFYING = {"verify-ca": 1, "verify-full": 2}  # libpq's modes that verify the server, by strength (others: 0)


def _root_cert(params: dict[str, str]) -> str | None:
    """The root certificate file libpq verifies with, if there is one: sslrootcert=, PGSSLROOTCERT, ~/.postgresql/."""
    path = params.get("sslrootcert") or os.environ.get("PGSSLROOTCERT") or os.path.expanduser("~/.postgresql/root.crt")
    return path if path == "system" or os.path.isfile(path) else None


def apply_postgres(target, option: str | None, env, dotenv_trusted: bool) -> None:
    """The target's TLS (sslmode, sslrootcert), its words for `config`, its warnings among its notes."""
    bundle, origin = resolve_ca_bundle(option, env, dotenv_trusted)
    if target.local_dev:
        if bundle:
            target.notes.append(f"note: CA bundle ({origin}) ignored: the local development database does not use TLS")
        target.tls = "none (local development database, Unix socket)"
        return
    host = target.host or target.params.get("host")
    target.tls, warnings = postgres_tls(target.params, host, target.sources.get("url"), bundle, origin)
    if bundle:
        target.sources["tls"] = origin
    target.notes += warnings


def truthy(value: str | None) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def mongo_tls(url, url_origin: str, bundle: str | None, bundle_origin: str | None) -> tuple[str, list[str]]:
    """Check a parsed Mongo URL against the CA bundle; return (the TLS mode in words, warnings)."""
    _regular_files({name: url.param(name) for name in MONGO_FILE_PARAMS}, url_origin)
    insecure = [name for name in MONGO_INSECURE if truthy(url.param(name))]
    tls_param = url.param("tls") if url.param("tls") is not None else url.param("ssl")
    tls_off = tls_param is not None and not truthy(tls_param)
    if bundle:
        if insecure:
            raise MigratorError(f"{url_origin} sets {insecure[0]}=true, which turns off the certificate checks that the "
                                f"CA bundle ({bundle_origin}) asks for; remove it from the URL or the secret", USAGE)
        if tls_off:
            raise MigratorError(f"{url_origin} turns TLS off, but a CA bundle is given ({bundle_origin}); "
                                "remove tls=false from the URL or the secret", USAGE)
        ca = url.param("tlsCAFile")
        if ca and Path(ca).resolve() != Path(bundle):
            raise MigratorError(f"{url_origin} names tlsCAFile={ca}, another CA than the bundle ({bundle_origin}); "
                                "remove one of them", USAGE)
        return f"verified with {bundle} ({bundle_origin})", []
    if insecure:
        return f"NOT verified ({insecure[0]}=true in {url_origin})", [
            f"warning: MongoDB TLS certificates are not verified ({insecure[0]}=true in {url_origin}); "
            "set CA_BUNDLE and remove it"]
    if truthy(tls_param) or url.scheme == "mongodb+srv":
        return "verified with the system's CAs", []
    return "off (plaintext)", []
