"""Where the connection settings come from: the one resolver for both stores.

PostgreSQL, first match wins (DESIGN.md):
  1. command-line options (--database-url, or --db-host/--db-port/--db-name/--db-user)
  2. DATABASE_URL, else the DIGIT platform's DB_URL (JDBC or not; user and password from the URL,
     else DB_USER / DB_PASSWORD, else FLYWAY_USER / FLYWAY_PASSWORD)
  3. DB_HOST / DB_PORT / DB_NAME / DB_USER / DB_PASSWORD, with the seed's defaults for the rest
  4. an AWS Secrets Manager secret (--secret-name / DB_SECRET_NAME), RDS layout
  5. nothing at all: the local development database (see devdb.py)
MongoDB: --mongo-url > MONGO_URL > a secret; the database: --mongo-db > MONGO_DB > the secret's > the
URL's path. Schemas (a DIGIT central instance's tenants): --schema > SCHEMA_NAME > the URL's
currentSchema. A JDBC URL (jdbc:postgresql://...) is accepted wherever a URL is.
The connection's own settings come from one source as a whole (the real environment if it names any,
else `.env`), and a password goes only to a host its own source named (credentials.py).
The environment is read through env.Env (real environment over `.env`, NAME_FILE files);
every setting remembers its origin, so `runner.py config` can say where it came from. The value types
live in targets.py.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from migrator import credentials, output, pg_url, planted, tls, urls
from migrator.env import Env
from migrator.errors import USAGE, MigratorError
from migrator.limits import read_timeout, resolve_ddl_limits
from migrator.targets import (MONGO_EXAMPLE, MONGO_SCHEMES, AwsOptions, DdlLimits, MongoOptions,
                              MongoTarget, PostgresOptions, PostgresTarget)

PG_DEFAULTS = {"host": "localhost", "port": "5432", "dbname": "unifieddevdb", "user": "postgres", "password": "postgres"}
PG_ENV_NAMES = {"host": "DB_HOST", "port": "DB_PORT", "dbname": "DB_NAME", "user": "DB_USER", "password": "DB_PASSWORD"}
PG_OPTION_NAMES = {"host": "--db-host", "port": "--db-port", "dbname": "--db-name", "user": "--db-user"}
# The platform's (Flyway's) credentials, read where the runner's own are absent.
PLATFORM_CREDENTIALS = {"user": "FLYWAY_USER", "password": "FLYWAY_PASSWORD"}
# A tenant's schema: a plain lower-case identifier, so it means the same quoted or not (as Flyway's
# currentSchema, which PostgreSQL folds to lower case) and needs no quoting in search_path.
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_ASCII_NUMBER = re.compile(r"[0-9]{1,9}")  # str.isdigit() would take '²'
# The platform's Flyway variables the runner reads and does not use (DIGIT's chart sets them all), and why.
UNUSED_PLATFORM_VARIABLES = {
}


# The settings that name a PostgreSQL connection: read from one source as a whole (env.source).
PG_CONNECTION = ("DATABASE_URL", "DB_URL", *PG_ENV_NAMES.values(), *PLATFORM_CREDENTIALS.values(), "DB_SECRET_NAME")
MONGO_CONNECTION = ("MONGO_URL", "MONGO_SECRET_NAME")


def postgres_configured(options: PostgresOptions, env: Env) -> bool:
    """Whether any PostgreSQL setting is given (nothing is resolved: no secret is read)."""
    return bool(options.database_url or options.aws.secret_name or any(getattr(options, k) for k in PG_OPTION_NAMES)
                or any(env.get(name)[0] for name in ("DATABASE_URL", "DB_URL", "DB_SECRET_NAME", *PG_ENV_NAMES.values())))


def resolve_postgres(options: PostgresOptions, env: Env) -> PostgresTarget:
    """Apply the settings order; raise MigratorError naming the setting that is wrong.

    The connection's settings are resolved per source first: the real environment, if it names any of
    them, else `.env`; the other source's are ignored (said in a note). Options are laid over that
    source; a password then goes only to a host its own source named (credentials.check_travel)."""
    all_env = env
    credentials.register_passwords(all_env)  # known before any setting is quoted back
    env, where = env.source(PG_CONNECTION)
    credentials.note_ignored(all_env, where, PG_CONNECTION, "PostgreSQL")
    secret_name, secret_origin = options.aws.secret_name, "--secret-name"
    if not secret_name:
        secret_name, secret_origin = env.get("DB_SECRET_NAME")

    option_fields = {k: getattr(options, k) for k in PG_OPTION_NAMES if getattr(options, k)}
    env_url, env_url_origin = env.get("DATABASE_URL")
    if not env_url:
        env_url, env_url_origin = env.get("DB_URL")
    env_fields = {k: env.get(name) for k, name in PG_ENV_NAMES.items() if env.get(name)[0]}

    if options.database_url:
        target = _from_url(options.database_url, "--database-url")
    elif option_fields:
        credentials.refuse_fields_over_url([PG_OPTION_NAMES[k] for k in option_fields], env_url, env_url_origin)
        target = _from_fields(option_fields, env)
    elif env_url:
        target = _from_url(env_url, env_url_origin)
    elif env_fields:
        target = _from_fields({}, env)
    elif secret_name:
        target = _from_secret(secret_name, secret_origin, options.aws, env)
        secret_name = None  # used, not ignored
    else:
        # the platform's credentials go with DB_URL: alone they name no server, and the local one is not it
        platform = [env.get(name)[1] for name in PLATFORM_CREDENTIALS.values() if env.get(name)[0]]
        if platform:
            raise MigratorError(f"{', '.join(platform)} set but no DB_URL (or DATABASE_URL, DB_HOST) names the server "
                                "they are for: set DB_URL too, or remove them to use the local development database",
                                USAGE)
        target = PostgresTarget(local_dev=True, sources={"target": "nothing configured"})

    credentials.secret_passed_over(target, all_env, (secret_name, secret_origin) if secret_name else None)
    if target.sources.get("url"):
        _url_credentials(target, env)
    credentials.check_travel(target, all_env, where)
    credentials.note_mixed(target)
    env = all_env  # the settings beyond the connection: each its own, the real environment first
    _resolve_schemas(target, options, env)
    tls.apply_postgres(target, options.ca_bundle, env, credentials.from_dotenv(target))
    target.read_timeout = read_timeout(env)
    try:  # the schema description's lock waits (schema/describe_locks.py); commands' options override them
        target.catalog_waits = resolve_ddl_limits(None, None, env)
    except MigratorError:  # said by the commands that run migrations; a description still waits within the defaults
        target.catalog_waits = DdlLimits()
    target.notes[:0] = env.take_notes()
    output.register_secret(target.password)
    return target


def _port(value: str, origin: str, *, quote_value: bool = True) -> int:
    """The port as a number. A secret's value is never quoted back: a mis-keyed secret may hold a password there."""
    digits = str(value).strip()
    if not re.fullmatch(r"[0-9]+", digits):  # ASCII digits only (int() takes '５４３２' and '5_432')
        shown = f" {value!r}" if quote_value else ""
        raise MigratorError(f"{origin}: port{shown} is not a number; set it to the server's port, e.g. 5432", USAGE)
    port = int(digits)
    if not 0 < port < 65536:
        raise MigratorError(f"{origin}: port {port} is out of range; set it to the server's port, e.g. 5432", USAGE)
    return port


def _from_url(url: str, origin: str) -> PostgresTarget:
    target, current = pg_url.read(url, origin)
    if len(current) > 1:
        raise MigratorError(f"{origin} sets currentSchema {len(current)} times; set it once (for several tenants "
                            "set SCHEMA_NAME=a,b instead)", USAGE)
    if current:
        schema_origin = f"{origin} (currentSchema)"
        target.schemas, target.sources["schemas"] = [_current_schema(current[0], schema_origin)], schema_origin
    return target


def _current_schema(value: str, origin: str) -> str:
    """JDBC's currentSchema is a search path: its first entry is the schema; public may follow (it is
    always on a tenant's search_path); another schema after it would be a second tenant's, refused."""
    first, *rest = _schema_names(value.split(","), origin)
    others = [name for name in rest if name != "public"]
    if others:
        raise MigratorError(f"{origin}: currentSchema={value} names schema {first} and also {', '.join(others)}; the "
                            f"runner migrates one schema per currentSchema (public stays on its search path): for "
                            "several tenants set SCHEMA_NAME=a,b instead", USAGE)
    return first


jdbc_params = pg_url.jdbc_params  # PgJDBC's query turned into libpq's (pg_url.py)


def _url_credentials(target: PostgresTarget, env: Env) -> None:
    """A URL without credentials (DIGIT's DB_URL) takes DB_USER / DB_PASSWORD (or their _FILE), then the
    platform's FLYWAY_USER / FLYWAY_PASSWORD; a user named nowhere is libpq's default, said so."""
    for key, name in PG_ENV_NAMES.items():
        if key not in PLATFORM_CREDENTIALS or getattr(target, key):
            continue
        value, origin = env.get(name)
        if not value:
            value, origin = env.get(PLATFORM_CREDENTIALS[key])
        if value:
            setattr(target, key, value)
            target.sources[key] = origin
    if not target.user:
        target.user, target.sources["user"] = _libpq_default_user()


def _libpq_default_user() -> tuple[str | None, str]:
    """The user libpq connects as when none is named: PGUSER, else the OS user."""
    import os
    import pwd

    if os.environ.get("PGUSER"):
        return os.environ["PGUSER"], "PGUSER (libpq default; set DB_USER or FLYWAY_USER)"
    try:
        return pwd.getpwuid(os.geteuid()).pw_name, "the OS user (libpq default; set DB_USER or FLYWAY_USER)"
    except KeyError:
        return None, "none (set DB_USER or FLYWAY_USER)"


def _resolve_schemas(target: PostgresTarget, options: PostgresOptions, env: Env) -> None:
    """--schema > SCHEMA_NAME > the URL's currentSchema; SCHEMA_TABLE and FLYWAY_LOCATIONS said to be unused."""
    from_url, url_schema = target.sources.get("schemas"), ",".join(target.schemas)
    if options.schemas:
        target.schemas, target.sources["schemas"] = _schema_names(list(options.schemas), "--schema"), "--schema"
    else:
        value, origin = env.get("SCHEMA_NAME")
        if value:
            target.schemas, target.sources["schemas"] = _schema_names(value.split(","), origin), origin
    if from_url and target.sources["schemas"] != from_url:
        target.notes.append(f"note: currentSchema={url_schema} of {from_url.removesuffix(' (currentSchema)')} is "
                            f"ignored: {target.sources['schemas']} names the schemas")
    target.create_schemas = options.create_schemas or _create_schemas(target, env)
    _one_per_pod(target, env)
    _flyway_history(target, env)
    target.creators_trusted = planted.trusted(env)
    for name, why in UNUSED_PLATFORM_VARIABLES.items():
        value, origin = env.get(name)
        if value:
            target.notes.append(f"note: {name}={value} ({origin}) is not used: {why}")


def _flyway_history(target: PostgresTarget, env: Env) -> None:
    """SCHEMA_TABLE names a Flyway folder's history table (Flyway's own, default flyway_schema_history);
    FLYWAY_OUT_OF_ORDER=false refuses a pending version older than the newest applied (Flyway's default)."""
    value, origin = env.get("SCHEMA_TABLE")
    if value:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
            raise MigratorError(f"{origin}: {value!r} is not a table name (letters, digits and `_`)", USAGE)
        target.flyway_table, target.sources["flyway_table"] = value, origin
    value, origin = env.get("FLYWAY_OUT_OF_ORDER")
    if value is not None:
        target.out_of_order = _yes(value, origin)


def _create_schemas(target: PostgresTarget, env: Env) -> bool:
    """CREATE_SCHEMAS=true: --create-schemas where only variables can be set (DIGIT's chart)."""
    value, origin = env.get("CREATE_SCHEMAS")
    if not _yes(value, origin):
        return False
    target.notes.append(f"note: {origin} is true: `migrate` creates a schema of {target.sources.get('schemas') or '(none named)'} "
                        "that does not exist (as --create-schemas)")
    return True


def _one_per_pod(target: PostgresTarget, env: Env) -> None:
    """An Indexed Job (k8s/job-per-schema.yaml): SCHEMA_INDEX picks this pod's schema, and SCHEMA_COUNT
    (the Job's completions) must equal the number of schemas, so no schema is left without a pod. With
    SCHEMA_COUNT set, an empty SCHEMA_INDEX (a missing annotation) is an error, never "every schema"."""
    index, origin = env.get("SCHEMA_INDEX")
    count, count_origin = env.get("SCHEMA_COUNT")
    if index is None and count is not None:
        raise MigratorError(f"{count_origin} is set but SCHEMA_INDEX is empty or unset, so this pod's schema is "
                            "unknown; set SCHEMA_INDEX from the annotation batch.kubernetes.io/job-completion-index "
                            "(k8s/job-per-schema.yaml), or unset SCHEMA_COUNT outside an Indexed Job", USAGE)
    if index is None:
        return
    if not target.schemas:
        raise MigratorError(f"{origin} is set but no schema is named; set SCHEMA_NAME=a,b,...", USAGE)
    if count is None or not _ASCII_NUMBER.fullmatch(count) or int(count) != len(target.schemas):
        raise MigratorError(f"{count_origin or 'SCHEMA_COUNT'} must be the Job's completions and equal the number of "
                            f"schemas ({len(target.schemas)} in {target.sources['schemas']}), so that every schema gets "
                            "a pod; set completions and SCHEMA_COUNT to it", USAGE)
    if not _ASCII_NUMBER.fullmatch(index) or int(index) >= len(target.schemas):
        raise MigratorError(f"{origin}: {index!r} is not an index of the {len(target.schemas)} schemas", USAGE)
    target.sources["schemas"] += f", item {index} ({origin})"
    target.schemas = [target.schemas[int(index)]]


def tenant_schemas(given: tuple[str, ...], env: Env) -> list[str]:
    """--schema, else SCHEMA_NAME, checked; empty when neither is set (for `sql lint`)."""
    if given:
        return _schema_names(list(given), "--schema")
    value, origin = env.get("SCHEMA_NAME")
    return _schema_names(value.split(","), origin) if value else []


def _schema_names(names: list[str], origin: str) -> list[str]:
    schemas = [name.strip() for name in names if name.strip()]
    for name in schemas:
        if not _SCHEMA_NAME.match(name) or name.startswith("pg_") or name == "information_schema":
            raise MigratorError(f"{origin}: {name!r} is not a tenant schema name; use a lower-case identifier "
                                "(a-z, 0-9, _, not pg_*), as in SCHEMA_NAME=pb,mz", USAGE)
    repeated = sorted({name for name in schemas if schemas.count(name) > 1})
    if repeated:
        raise MigratorError(f"{origin} names schema {', '.join(repeated)} more than once; name each once", USAGE)
    if not schemas:
        raise MigratorError(f"{origin} names no schema; give names, e.g. SCHEMA_NAME=pb,mz", USAGE)
    return schemas


def _from_fields(option_fields: dict[str, str], env: Env) -> PostgresTarget:
    """Options first, then DB_* variables, then the seed's defaults, field by field."""
    target = PostgresTarget()
    for key, default in PG_DEFAULTS.items():
        if key in option_fields:
            value, origin = option_fields[key], PG_OPTION_NAMES[key]
        else:
            value, origin = env.get(PG_ENV_NAMES[key])
            if value is None and key in PLATFORM_CREDENTIALS:
                value, origin = env.get(PLATFORM_CREDENTIALS[key])
        if value is None and key == "password" and env.set_empty("DB_PASSWORD"):
            raise MigratorError(f"{env.set_empty('DB_PASSWORD')} is set but empty: set the password, or remove the "
                                "setting (only a configuration that names no password uses the seed's default)", USAGE)
        if value is None:
            value, origin = default, "default"
        target.sources[key] = origin
        if key == "host":
            _check_host(value, origin)
        setattr(target, key, _port(value, origin) if key == "port" else value)
    if target.sources["password"] == "default" and not _local(target.host):
        target.notes.append(f"note: no password set (DB_PASSWORD): the seed's default password is used for host "
                            f"{target.host}; set DB_PASSWORD (or DB_PASSWORD_FILE) for a real server")
    return target


def _local(host: str) -> bool:
    """This machine: the seed's default password is the local development database's."""
    return host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")


def _check_host(host: str, origin: str) -> None:
    if not pg_url.HOST_SETTING.match(host):
        raise MigratorError(f"{origin}: not a host name, IP address or socket folder (no port, path or query here: "
                            "use DB_PORT and DB_NAME)", USAGE)


def _from_secret(name: str, origin: str, aws: AwsOptions, env: Env) -> PostgresTarget:
    from migrator import secrets

    data = secrets.fetch_json(name, aws, env)
    missing = [k for k in ("host", "username", "password") if not data.get(k)]
    if missing:
        raise MigratorError(
            f"secret {name} ({origin}) lacks {', '.join(missing)}; "
            "it needs the RDS layout: host, port, username, password, dbname"
        )
    source = f"secret {name}"
    _check_host(str(data["host"]), f"secret {name} key host")
    return PostgresTarget(
        host=str(data["host"]),
        port=_port(str(data.get("port") or 5432), f"secret {name} key port", quote_value=False),
        dbname=str(data.get("dbname") or PG_DEFAULTS["dbname"]),
        user=str(data["username"]),
        password=str(data["password"]),
        sources={k: source for k in ("host", "port", "dbname", "user", "password")},
    )


# --- MongoDB / DocumentDB ------------------------------------------------------------------
#
# First match wins: --mongo-url > MONGO_URL > a secret (--secret-name on `mongo` commands,
# --mongo-secret-name elsewhere, or MONGO_SECRET_NAME). The database: --mongo-db > MONGO_DB >
# the secret's > the URL's path. Nothing configured: Mongo is skipped.

SEED_URI_KEY, SEED_DB_KEY = "spring.data.mongodb.uri", "spring.data.mongodb.database"
DOCDB_HOST_SUFFIX = ".docdb.amazonaws.com"


def resolve_mongo(options: MongoOptions, env: Env) -> MongoTarget | None:
    """The Mongo target, or None when nothing is configured. Every secret the settings hold is masked from here on,
    whatever its source (a DB_PASSWORD of .env, its file): a patch can read them and print them."""
    for value in env.secret_values():
        output.register_secret(value)
    source, where = env.source(MONGO_CONNECTION)  # per source, as PostgreSQL's (resolve_postgres)
    credentials.note_ignored(env, where, MONGO_CONNECTION, "MongoDB")
    url, origin = (options.url, "--mongo-url") if options.url else source.get("MONGO_URL")
    secret_name, secret_origin = (options.aws.secret_name, "--secret-name") if options.aws.secret_name else source.get("MONGO_SECRET_NAME")
    secret_db = None
    documentdb = False
    if url:
        target_uri = url
    elif secret_name:
        target_uri, secret_db, documentdb = _mongo_from_secret(secret_name, secret_origin, options.aws, env)
        origin = f"secret {secret_name}"
    else:
        return None
    parsed = urls.parse(target_uri, origin, "MongoDB", MONGO_SCHEMES, MONGO_EXAMPLE)
    if not parsed.netloc:
        raise MigratorError(f"{origin} names no host; expected {MONGO_EXAMPLE}", USAGE)
    database, db_origin = _mongo_database(options, env, secret_db, origin, parsed)
    ca_file, ca_origin = tls.resolve_ca_bundle(options.ca_bundle, env,
                                               where == ".env" and not (options.url or options.aws.secret_name))
    tls_mode, warnings = tls.mongo_tls(parsed, origin, ca_file, ca_origin)
    flag, flag_origin = env.get("MONGO_DOCUMENTDB")
    documentdb = documentdb or DOCDB_HOST_SUFFIX in parsed.netloc.lower() or _yes(flag, flag_origin)
    sources = {"url": origin, "database": db_origin}
    if ca_file:
        sources["tls"] = ca_origin
    readonly, readonly_origin = env.get("MONGO_READONLY_URL")
    if readonly:
        ro = urls.parse(readonly, readonly_origin, "MongoDB", MONGO_SCHEMES, MONGO_EXAMPLE)
        if not ro.netloc:
            raise MigratorError(f"{readonly_origin} names no host; expected {MONGO_EXAMPLE}", USAGE)
        # A dry run must read the log of the server --run writes, and as another user, or "read-only" means nothing.
        if ro.netloc.lower() != parsed.netloc.lower():
            raise MigratorError(f"{readonly_origin} points at {ro.netloc}, not at {parsed.netloc} ({origin}); "
                                "set it to a read-only user's URL on the same server", USAGE)
        if ro.user == parsed.user:
            raise MigratorError(f"{readonly_origin} connects as the same user as {origin} ({parsed.user or 'none'}), which can "
                                "write; set it to a read-only user's URL, or unset it", USAGE)
        sources["readonly"] = readonly_origin
    notes = env.take_notes() + warnings
    return MongoTarget(target_uri, database, sources, ca_file, documentdb, options.timeout, tls_mode, notes,
                       options.patch_timeout, readonly_uri=readonly or None)


def _yes(value: str | None, origin: str | None) -> bool:
    if value is None:
        return False
    if value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise MigratorError(f"{origin}: {value!r} is not a yes/no value; use true or false", USAGE)


def _mongo_database(options: MongoOptions, env: Env, secret_db: str | None, url_origin: str, url: urls.Url) -> tuple[str, str]:
    if options.database:
        return options.database, "--mongo-db"
    value, origin = env.get("MONGO_DB")
    if value:
        return value, origin
    if secret_db:
        return secret_db, url_origin
    if url.path:
        return url.path, f"{url_origin} (path)"
    raise MigratorError(f"no MongoDB database named: set MONGO_DB or --mongo-db, or put it in the URL ({url_origin})", USAGE)


def _mongo_from_secret(name: str, origin: str, aws: AwsOptions, env: Env) -> tuple[str, str | None, bool]:
    """(uri, database, is DocumentDB) from the seed's layout or DocumentDB's."""
    from migrator import secrets

    data = secrets.fetch_json(name, aws, env)
    if data.get(SEED_URI_KEY):
        return str(data[SEED_URI_KEY]), data.get(SEED_DB_KEY), False
    missing = [k for k in ("host", "username", "password") if not data.get(k)]
    if missing:
        raise MigratorError(
            f"secret {name} ({origin}) has neither {SEED_URI_KEY} nor the DocumentDB keys host, port, username, "
            f"password, dbname (missing {', '.join(missing)})"
        )
    output.register_secret(str(data["password"]))
    _check_host(str(data["host"]), f"secret {name} key host")
    port = _port(str(data.get("port") or 27017), f"secret {name} key port", quote_value=False)
    query = "?tls=true&retryWrites=false"
    if not tls.truthy(data.get("ssl", "true")):
        # The operator's acknowledgement: the real environment's only, as DB_TLS_INSECURE (attack23x 8).
        allowed, allowed_origin = env.environ.get("MONGO_ALLOW_PLAINTEXT"), "MONGO_ALLOW_PLAINTEXT (environment)"
        if not _yes(allowed, allowed_origin):
            dotenv = " (a .env's does not count)" if env.dotenv.get("MONGO_ALLOW_PLAINTEXT") else ""
            raise MigratorError(
                f"secret {name} ({origin}) says ssl={data.get('ssl')}: DocumentDB without TLS sends the password in "
                "clear; set ssl to true in the secret, or set MONGO_ALLOW_PLAINTEXT=true in the environment if that "
                f"is deliberate{dotenv}", USAGE)
        env.note(f"warning: INSECURE: {allowed_origin}: DocumentDB (secret {name}) without TLS, the password in clear")
        query = "?retryWrites=false"
    uri = f"mongodb://{quote(str(data['username']), safe='')}:{quote(str(data['password']), safe='')}@{data['host']}:{port}/{query}"
    return uri, data.get("dbname"), True
