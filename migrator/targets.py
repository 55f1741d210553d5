"""The value types of the settings: what was asked for (options) and what was resolved (targets).

Plain data with their own presentation (URLs with the password masked); no resolving here, that is
settings.py's. Imported one way: settings, secrets, postgres and mongo import these, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import quote, urlencode

from migrator import output, urls
from migrator.errors import USAGE, MigratorError

PG_SCHEMES = ("postgresql", "postgres")
MONGO_SCHEMES = ("mongodb", "mongodb+srv")
MONGO_EXAMPLE = "mongodb://user:password@host:27017/db or mongodb+srv://…"
MONGO_SOCKET_TIMEOUT_MS = 300_000  # one operation's answer: 5 minutes


@dataclass
class AwsOptions:
    secret_name: str | None = None
    profile: str | None = None
    region: str | None = None


@dataclass
class PostgresOptions:
    """What the command line said about the PostgreSQL connection."""

    database_url: str | None = None
    host: str | None = None
    port: str | None = None
    dbname: str | None = None
    user: str | None = None
    ca_bundle: str | None = None
    aws: AwsOptions = field(default_factory=AwsOptions)
    schemas: tuple[str, ...] = ()  # --schema, repeatable: run per schema (a DIGIT central instance's tenants)
    create_schemas: bool = False  # create a schema that does not exist (else it fails, on its own)


# libpq's password file for a connection whose host the invoker did not name (credentials.py): a path no one
# can create (its parent is a device), so libpq finds no file and says nothing.
NO_PASSFILE = "/dev/null/no-password-file"


@dataclass
class PostgresTarget:
    """A resolved PostgreSQL connection; `sources` maps each setting to where it came from."""

    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    user: str | None = None
    password: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    local_dev: bool = False
    notes: list[str] = field(default_factory=list)  # printed before the command runs
    tls: str = ""  # the TLS mode actually used, in words, for `config`
    schemas: list[str] = field(default_factory=list)  # the tenants' schemas to run over; empty: one run, as ever
    schema: str | None = None  # the one schema this connection migrates (search_path and bookkeeping there)
    create_schemas: bool = False
    read_timeout: float = 0.0  # seconds a read-only command waits for an answer to a statement (0: for ever)
    flyway_table: str = "flyway_schema_history"  # SCHEMA_TABLE: a Flyway folder's history (Flyway's own table)
    out_of_order: bool = True  # FLYWAY_OUT_OF_ORDER=false: an older pending version is refused, not applied
    history: str | None = None  # a Flyway folder's run: its history (SCHEMA_TABLE), whose own lock it takes (pg_lock)
    catalog_waits: DdlLimits | None = None  # each try's lock_timeout and the budget of the schema description's waits
    creators_trusted: tuple[str, ...] = ()  # SCHEMA_CREATORS_TRUSTED: roles accepted to plant in a migrated schema
    live_user: str | None = None  # a --scratch-url server's: the live target's user (scratch.powers, attack23w 1)

    def for_schema(self, schema: str) -> "PostgresTarget":
        """The same server, narrowed to one tenant's schema."""
        return replace(self, schema=schema, schemas=[schema], notes=[], params=dict(self.params),
                       sources=dict(self.sources))

    def one_schema(self, what: str) -> "PostgresTarget":
        """For `what` (a command without a per-schema loop): narrowed to the one schema given, or a usage error."""
        if not self.schemas or self.schema:
            return self
        if len(self.schemas) > 1:
            raise MigratorError(f"{what} works on one schema at a time, and {self.sources['schemas']} names "
                                f"{len(self.schemas)}; pass --schema NAME", USAGE)
        return self.for_schema(self.schemas[0])

    def _url(self, masked: bool) -> str:
        auth = ""
        if self.user:
            auth = quote(self.user, safe="")
            if self.password:
                auth += ":" + ("***" if masked else quote(self.password, safe=""))
            auth += "@"
        params = dict(self.params)
        if masked and params.get("passfile") == NO_PASSFILE:  # the runner's own, not the user's: not shown
            del params["passfile"]
        if masked and params.get("password") == "":  # devdb's: no PGPASSWORD to its socket (the runner's own too)
            del params["password"]
        hostport = self.host or ""
        if hostport.startswith("/"):  # a Unix socket directory travels as ?host=
            params.setdefault("host", hostport)
            hostport = ""
        elif ":" in hostport:  # IPv6
            hostport = f"[{hostport}]"
        if self.port:
            hostport += f":{self.port}"
        query = f"?{urlencode(params, safe='/')}" if params else ""
        return f"postgresql://{auth}{hostport}/{quote(self.dbname or '', safe='')}{query}"

    @property
    def url(self) -> str:
        """The connection URL, credentials URL-encoded. Never print it: use `display_url`."""
        return self._url(masked=False)

    @property
    def display_url(self) -> str:
        return self._url(masked=True)

    @property
    def server(self) -> str:
        return server_name(self.host or self.params.get("host", "localhost"), self.port)

    @property
    def where(self) -> str:
        """host:port/db for messages (over a socket: `socket /run/pg (port 5432), database db`)."""
        where = where_name(self.host or self.params.get("host", "localhost"), self.port, self.dbname)
        return f"{where} schema {self.schema}" if self.schema else where


def server_name(host: str, port: int | None) -> str:
    """host:port for messages; a Unix socket folder as one: `socket /run/pg (port 5432)`."""
    if host.startswith("/"):  # libpq's socket folder, never a host name
        return f"socket {host} (port {port or 5432})"
    return f"{host}:{port or 5432}"


def where_name(host: str, port: int | None, dbname: str | None) -> str:
    server = server_name(host, port)
    return f"{server}, database {dbname}" if host.startswith("/") else f"{server}/{dbname}"


@dataclass
class DdlLimits:
    """Set on every migration's session, so DDL stuck behind application traffic fails fast: each try waits at
    most lock_timeout for its locks (so it never stalls the application longer), and a try that timed out is
    retried with backoff until lock_retry_budget is spent (postgres/retry.py)."""

    lock_timeout: str = "300ms"
    statement_timeout: str = "10min"
    lock_retry_budget: str = "5min"
    backfill_max_batches: int = 100_000  # a `-- backfill: batch` statement's most runs (postgres/backfill.py)
    notes: list = field(default_factory=list)  # what config and migrate say of these values (limits._notes)


@dataclass
class MongoOptions:
    url: str | None = None
    database: str | None = None
    ca_bundle: str | None = None
    timeout: float = 10.0
    patch_timeout: float = 0.0  # seconds a patch (Python or mongosh) may run; 0: no limit
    aws: AwsOptions = field(default_factory=AwsOptions)


@dataclass
class MongoTarget:
    """A resolved MongoDB connection. `uri` holds the credentials: never print it, use `display_uri`."""

    uri: str
    database: str
    sources: dict[str, str] = field(default_factory=dict)
    ca_file: str | None = None
    documentdb: bool = False
    timeout: float = 10.0
    tls: str = ""  # the TLS mode actually used, in words, for `config`
    notes: list[str] = field(default_factory=list)
    patch_timeout: float = 0.0
    readonly_uri: str | None = None  # MONGO_READONLY_URL: a read-only user's URL, for dry runs and plan
    read_only: bool = False  # this is that connection: the server refuses writes

    def for_dry_run(self) -> "MongoTarget":
        """The connection a dry run uses: the read-only user's, when one is set (the server then refuses every
        write, however a patch tries), else this one (the runner's guards only)."""
        if not self.readonly_uri:
            return self
        return replace(self, uri=self.readonly_uri, readonly_uri=None, read_only=True, notes=[],
                       sources={**self.sources, "url": self.sources.get("readonly", "MONGO_READONLY_URL")})

    @property
    def parsed(self) -> urls.Url:
        return urls.parse(self.uri, self.sources.get("url", "the Mongo URL"), "MongoDB", MONGO_SCHEMES, MONGO_EXAMPLE)

    @property
    def display_uri(self) -> str:
        return output.mask(self.uri)

    @property
    def hosts(self) -> str:
        return self.parsed.netloc or "localhost:27017"

    @property
    def where(self) -> str:
        return f"{self.hosts}/{self.database}"

    def client_options(self) -> dict:
        """pymongo options: bounded timeouts, TLS with the CA bundle, retryWrites off for DocumentDB."""
        ms = int(self.timeout * 1000)
        # socketTimeoutMS: a server (or proxy) that goes silent mid-operation fails that operation instead of
        # hanging the run; long enough for a Python patch's big update, and never shorter than its time limit.
        socket_ms = max(MONGO_SOCKET_TIMEOUT_MS, int(self.patch_timeout * 1000))
        options: dict = {"serverSelectionTimeoutMS": ms, "connectTimeoutMS": ms, "socketTimeoutMS": socket_ms,
                         "appname": "hcm-db-migrations", "tz_aware": True}
        if self.ca_file:
            options.update(tls=True, tlsCAFile=self.ca_file)
        if self.documentdb:
            options["retryWrites"] = False
        return options

    def shell_uri(self) -> str:
        """The URI for mongosh's connect(): the same server, credentials and auth database as pymongo uses.

        The path becomes the target database, so the auth database it stood for is kept as authSource
        (pymongo's rule: the path, else admin). Every query key is kept, repeated ones too.
        """
        url = self.parsed
        query = [(k, v) for k, v in url.query if k.lower() not in self._shell_overrides()]
        if url.user and url.param("authSource") is None:
            query.append(("authSource", url.path or "admin"))
        for key in ("serverSelectionTimeoutMS", "connectTimeoutMS"):  # as pymongo's client_options
            if url.param(key) is None:
                query.append((key, str(int(self.timeout * 1000))))
        if self.ca_file:
            query += [("tls", "true"), ("tlsCAFile", self.ca_file)]
        if self.documentdb:
            query.append(("retryWrites", "false"))
        userinfo = self.uri.partition("://")[2].rpartition("@")[0]
        auth = f"{userinfo}@" if userinfo else ""
        return (f"{url.scheme}://{auth}{url.netloc}/{quote(self.database, safe='')}"
                + (f"?{urlencode(query, safe='/')}" if query else ""))

    def _shell_overrides(self) -> set[str]:
        keys = set()
        if self.ca_file:
            keys |= {"tls", "ssl", "tlscafile"}
        if self.documentdb:
            keys.add("retrywrites")
        return keys
