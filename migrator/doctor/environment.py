"""The checks that need no database: .env, the settings of both stores, AWS secrets, the CA bundle, tools."""

from __future__ import annotations

import functools
import os
import shutil
import ssl
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from migrator import tls
from migrator.doctor import FAIL, OK, WARN, Check, DoctorReport, failed
from migrator.env import Env
from migrator.errors import MigratorError
from migrator.settings import DOCDB_HOST_SUFFIX, SEED_URI_KEY, resolve_mongo, resolve_postgres
from migrator.targets import AwsOptions, MongoOptions, MongoTarget, PostgresOptions, PostgresTarget

PG_SECRET_KEYS = ("host", "port", "username", "password", "dbname")
DOCDB_SECRET_KEYS = ("host", "port", "username", "password", "dbname")


def dotenv(report: DoctorReport, env: Env) -> None:
    where = Path(".env").resolve()
    broken = _unparsable_lines(where)
    if broken:
        report.add(Check(".env", WARN, f"{where}: line(s) {', '.join(map(str, broken))} cannot be parsed and are ignored "
                         f"({len(env.dotenv)} setting(s) read)", "write each line as NAME=value (quote values with spaces)"))
    elif env.dotenv:
        report.add(Check(".env", OK, f"read {where} ({len(env.dotenv)} setting(s); the real environment wins over it)"))
    else:
        report.add(Check(".env", OK, f"none in {where.parent}: settings come from the environment and options only"))


def _unparsable_lines(path: Path) -> list[int]:
    """The lines python-dotenv skips (it only logs them), read with its own parser."""
    from dotenv.parser import parse_stream

    if not path.is_file():
        return []
    with open(path, encoding="utf-8", errors="replace") as stream:
        return [binding.original.line for binding in parse_stream(stream) if binding.error]


def ca_bundle(report: DoctorReport, option: str | None, env: Env) -> None:
    """Readable, PEM (the runner's own check), then each certificate's validity dates (the stdlib's parser)."""
    try:
        path, origin = tls.resolve_ca_bundle(option, env)
    except MigratorError as exc:
        report.add(failed("ca bundle", str(exc)))
        return
    if path is None:
        if env.value("CA_BUNDLE"):  # optional and absent: resolve_ca_bundle left its warning in env's notes
            report.add(Check("ca bundle", WARN, f"{env.value('CA_BUNDLE')} (CA_BUNDLE) is not there; TLS is not verified",
                             "create the ConfigMap with the RDS bundle (README, \"The CA bundle\")"))
        else:
            report.add(Check("ca bundle", OK, "none set (CA_BUNDLE, --ca-bundle): remote servers are encrypted, not verified"))
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        report.add(Check("ca bundle", FAIL, f"{path} ({origin}) holds no certificate that TLS can load ({exc.__class__.__name__})",
                         f"use the PEM bundle ({tls.RDS_BUNDLE_URL})"))
        return
    certificates = [(_when(c["notBefore"]), _when(c["notAfter"])) for c in context.get_ca_certs() if "notAfter" in c]
    if not certificates:
        blocks = Path(path).read_text(errors="replace").count("-----BEGIN CERTIFICATE-----")
        report.add(Check("ca bundle", FAIL, f"{path} ({origin}): no CA certificate among its {blocks} certificate(s) "
                         "(a server's or client's own certificate, not the authority that signs it)",
                         f"use the CA bundle ({tls.RDS_BUNDLE_URL})"))
        return
    now = datetime.now(timezone.utc)
    expiries = sorted(after for _, after in certificates)
    expired = sum(1 for _, after in certificates if after <= now)
    early = sum(1 for before, after in certificates if before > now)
    detail = (f"{path} ({origin}): {len(certificates)} CA certificate(s), expiring {expiries[0]:%Y-%m-%d} to "
              f"{expiries[-1]:%Y-%m-%d}; used for PostgreSQL verify-full and Mongo TLS")
    problems = ", ".join(p for p in (f"{expired} expired" if expired else "", f"{early} not valid yet" if early else "") if p)
    if expired + early == len(certificates):
        report.add(Check("ca bundle", FAIL, f"{detail}, none valid today ({problems})",
                         f"download the current bundle ({tls.RDS_BUNDLE_URL}); check the clock if none is valid yet"))
    elif problems:
        report.add(Check("ca bundle", WARN, f"{detail}, {problems}",
                         "fine while the server's CA is among the valid ones; refresh the bundle when convenient"))
    else:
        report.add(Check("ca bundle", OK, detail))


def _when(text: str) -> datetime:
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(text), timezone.utc)


def secret(report: DoctorReport, name: str, origin: str, aws: AwsOptions, env: Env, store: str) -> bool:
    """The secret read with the runner's own client; its key names (never values), region and profile."""
    import boto3

    from migrator import secrets

    check = f"{store} secret"
    try:
        data = secrets.fetch_json(name, aws, env)
    except MigratorError as exc:
        report.add(failed(check, str(exc), f"check the secret's name ({origin}), --region/AWS_REGION and --profile"))
        return False
    profile, region = secrets.profile_and_region(aws, env)
    region = region or boto3.Session(profile_name=profile).region_name
    where = f"AWS secret {name} ({origin}), region {region}" + (f", profile {profile}" if profile else "")
    present = sorted(k for k, v in data.items() if v not in (None, ""))
    if store == "mongo" and data.get(SEED_URI_KEY):
        report.add(Check(check, OK, f"{where}: keys {', '.join(present)}"))
        return True
    expected = PG_SECRET_KEYS if store == "postgres" else DOCDB_SECRET_KEYS
    missing = [k for k in expected if k not in present]
    needed = [k for k in missing if k in ("host", "username", "password")]
    if needed:
        layout = "the RDS layout" if store == "postgres" else f"{SEED_URI_KEY}, or DocumentDB's"
        report.add(Check(check, FAIL, f"{where}: lacks {', '.join(needed)} (has {', '.join(present) or 'no keys'})",
                         f"store {layout}: {', '.join(expected)}"))
        return False
    if missing:
        report.add(Check(check, WARN, f"{where}: keys {', '.join(present)}; no {', '.join(missing)}, the default is used",
                         f"add {', '.join(missing)} to the secret to be explicit"))
    else:
        report.add(Check(check, OK, f"{where}: keys {', '.join(present)}"))
    return True


def postgres_settings(report: DoctorReport, options: PostgresOptions, env: Env) -> PostgresTarget | None:
    """The resolver's answer and where each setting came from; the secret checked when it is used."""
    name, origin = (options.aws.secret_name, "--secret-name") if options.aws.secret_name else env.get("DB_SECRET_NAME")
    try:
        target = resolve_postgres(options, env)
    except MigratorError as exc:
        if name and f"secret {name}" in str(exc):
            secret(report, name, origin, options.aws, env, "postgres")
        report.add(failed("postgres settings", str(exc)))  # a repeat of the secret's FAIL is dropped
        return None
    if name and f"secret {name}" in target.sources.values():
        secret(report, name, origin, options.aws, env, "postgres")
    if target.local_dev:
        report.add(Check("postgres settings", OK, "nothing configured: `make migrate` uses the local development "
                         "database (started on first use); set DATABASE_URL or DB_HOST to check another"))
        return target
    origins = sorted(set(target.sources.values()))
    report.add(Check("postgres settings", OK, f"{target.display_url} from {', '.join(origins)}; TLS {target.tls}"))
    _notes(report, "postgres settings", target.notes)
    return target if len(target.schemas) > 1 else target.one_schema("doctor")  # several: checked one by one


def mongo_settings(report: DoctorReport, options: MongoOptions, env: Env, mongo_dir: Path | None) -> MongoTarget | None:
    url = options.url or env.value("MONGO_URL")
    name, origin = (options.aws.secret_name, "--secret-name") if options.aws.secret_name else env.get("MONGO_SECRET_NAME")
    if name and not url and not secret(report, name, origin, options.aws, env, "mongo"):
        return None
    try:
        target = resolve_mongo(options, env)
    except MigratorError as exc:
        report.add(failed("mongo settings", str(exc)))
        return None
    if target is None:
        found = sorted(p.name for p in mongo_dir.glob("*.[jp][sy]")) if mongo_dir and mongo_dir.is_dir() else []
        if found:
            report.add(Check("mongo settings", WARN, f"not configured: the {len(found)} patch(es) in {mongo_dir} will be skipped",
                             "set MONGO_URL and MONGO_DB, or MONGO_SECRET_NAME"))
        else:
            report.add(Check("mongo settings", OK, "not configured, and no patches: Mongo is skipped"))
        return None
    kind = "DocumentDB" if target.documentdb else "MongoDB"
    report.add(Check("mongo settings", OK, f"{kind} {target.display_uri}, database {target.database} "
                     f"(from {_origin(target.sources['database'])}); TLS {target.tls}"))
    _notes(report, "mongo settings", target.notes)
    remote = not all(tls.is_local(h.rsplit(":", 1)[0].strip("[]")) for h in target.hosts.split(","))
    if target.tls.startswith("off") and target.parsed.password and remote:  # as PostgreSQL's settings warn
        report.add(Check("mongo settings", WARN, f"TLS to MongoDB at {target.hosts} is off: the password travels in clear",
                         "add tls=true to the URL (and CA_BUNDLE to verify the server)"))
    if not target.documentdb and DOCDB_HOST_SUFFIX not in target.hosts.lower() and "docdb" in target.hosts.lower():
        report.add(Check("mongo settings", WARN, f"{target.hosts} looks like DocumentDB but is not treated as such",
                         "set MONGO_DOCUMENTDB=true (retryWrites=false)"))
    return target


def _origin(source: str) -> str:
    """'MONGO_URL (environment) (path)' as words: the path of MONGO_URL (environment)."""
    return f"the path of {source.removesuffix(' (path)')}" if source.endswith(" (path)") else source


def _notes(report: DoctorReport, name: str, notes: list[str]) -> None:
    """Every note of the resolver (a missing NAME_FILE, a setting ignored, weak TLS) is something to look at."""
    for note in notes:
        detail, _, remedy = note.removeprefix("warning: ").removeprefix("note: ").partition("; ")
        report.add(Check(name, WARN, detail, remedy))


def mongosh(report: DoctorReport, mongo_dir: Path | None, mongo_configured: bool, js_to_run: list[str] | None) -> None:
    """mongosh, found as the runner finds it. Missing, it FAILs only when a JavaScript patch would run
    (pending or blocked, or unknown because Mongo could not be read); otherwise it is a warning."""
    from migrator.mongo import js_patch

    js = sorted(mongo_dir.glob("*.js")) if mongo_dir and mongo_dir.is_dir() else []
    if not js:
        report.add(Check("mongosh", OK, f"not needed: no JavaScript patch in {mongo_dir or 'this run (no Mongo folder or connection given)'}"))
        return
    try:
        path = js_patch.mongosh_path()
    except MigratorError as exc:
        check = report.add(failed("mongosh", str(exc)))
        if not mongo_configured:
            check.status, check.detail = WARN, check.detail + f" ({len(js)} .js patch(es) in {mongo_dir}, not run while Mongo is not configured)"
        elif js_to_run is None:
            check.detail += f" ({len(js)} .js patch(es) in {mongo_dir}; which would run is unknown: Mongo was not read)"
        elif js_to_run:
            check.detail += f" ({len(js_to_run)} .js patch(es) would run: {', '.join(js_to_run[:3])}{', ...' if len(js_to_run) > 3 else ''})"
        else:
            check.status, check.detail = WARN, check.detail + f" (all {len(js)} .js patch(es) applied: no run needs it now, a new one would)"
        return
    version = _version([path, "--version"])
    if version is None:
        report.add(Check("mongosh", FAIL if js_to_run or js_to_run is None else WARN,
                         f"{path} does not run (`mongosh --version` failed)",
                         "run `make mongosh`, or set MONGOSH to a working mongosh"))
    else:
        report.add(Check("mongosh", OK, f"{version} at {path} ({len(js)} .js patch(es))"))


def squawk(report: DoctorReport) -> None:
    from migrator import lint

    path = lint.squawk_path()
    if path is None:
        report.add(Check("squawk", WARN, "not installed (needed by `make lint` and `plan`'s lint only, not by a run)",
                         "`make install` brings it on a developer's machine"))
    else:
        report.add(Check("squawk", OK, f"{_version([path, '--version']) or 'present'} at {path}"))


def _version(command: list[str]) -> str | None:
    """The first line a tool prints for --version. Asked once per process while the file is unchanged: mongosh
    starts Node.js for it (about 2 s on a loaded machine), and doctor runs it once per schema and per check."""
    try:
        found = os.stat(shutil.which(command[0]) or command[0])
    except OSError:
        return None
    return _version_of(tuple(command), (found.st_ino, found.st_size, found.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _version_of(command: tuple[str, ...], _file_stamp) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None
