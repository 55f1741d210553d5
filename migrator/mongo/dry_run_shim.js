// The dry-run shim, loaded by mongosh after `db` is connected and before the patch: every write
// method of mongosh's Database, Collection, Mongo and Bulk objects throws before it reaches the
// server, so a patch that forgets `if (DRY_RUN)` cannot write. Under them, mongosh's service provider
// (the one bridge from every shell method to the Node driver) lets only its read methods through, so a
// write route the names miss (ensureIndex -> _createIndexes -> createIndexes) is refused there too.
// Under the provider, the Node driver's connection sends only read commands. The patched prototypes are
// frozen and connect()/new Mongo() are refused. A careless patch is stopped; a deliberate one could still find a
// way (bytes written to the driver's socket): MONGO_READONLY_URL, the URL a dry run's mongosh gets, makes the
// server refuse those writes (and Landlock keeps .env out of reach).
(function () {
  "use strict";
  const WRITES = /^(insert|ensureIndex|update|delete|remove|replace|save|findOneAnd|findAndModify|bulkWrite|initialize\w*BulkOp|drop|create|rename|hideIndex|unhideIndex|grant|revoke|shutdown|fsync|setProfiling|killOp|compact|reIndex|convertToCapped|enableSharding|shard|moveChunk|setLogLevel|setFeatureCompatibility|clone|copy|rotate|execute|mapReduce|cleanupOrphaned|checkMetadata|configureQueryAnalyzer)/;
  // runCommand/adminCommand: only these read commands pass (aggregate only without $out/$merge).
  const READ_COMMANDS = new Set(["ping", "hello", "ismaster", "buildinfo", "serverstatus", "hostinfo",
    "connectionstatus", "dbstats", "collstats", "count", "distinct", "find", "getmore", "killcursors",
    "listcollections", "listindexes", "listdatabases", "explain", "aggregate", "datasize", "whatsmyuri",
    "getparameter", "getcmdlineopts", "currentop", "validate", "listsearchindexes"]);

  // The service provider's methods that only read (or only look at the connection); any other one, a write or
  // one a later mongosh adds, is refused. aggregate and the runCommand family are checked like the shell's.
  const PROVIDER_READS = new Set(["getNewConnection", "_getHostnameForConnection", "getConnectionInfo", "db",
    "_dbTestWrapper", "getDBCache", "hasUnifiedAggregateOptions", "close", "suspend", "count", "countDocuments",
    "distinct", "estimatedDocumentCount", "find", "listDatabases", "getTopologyDescription", "getIndexes",
    "listCollections", "authenticate", "getReadPreference", "getReadConcern", "getWriteConcern",
    "readPreferenceFromOptions", "resetConnectionOptions", "startSession", "watch", "getRawClient", "getURI",
    "getFleOptions", "processDriverOptions", "getSearchIndexes", "createClientEncryption"]);
  const PROVIDER_CHECKED = {aggregate: 2, aggregateDb: 1, runCommand: 1, runCommandWithCheck: 1, runCursorCommand: 1};

  // What the driver itself sends besides reads: the handshake, authentication, ending sessions.
  const WIRE_ALSO = new Set(["hello", "ismaster", "saslstart", "saslcontinue", "authenticate", "getnonce", "logout",
    "endsessions"]);

  function refuse(what) {
    throw new Error(`${what} is not allowed in a dry run (it writes, or may); check DRY_RUN before writing`);
  }

  function pipelineWrites(value) {  // $out/$merge anywhere: a stage, or inside $facet/$lookup/$unionWith
    if (Array.isArray(value)) return value.some(pipelineWrites);
    if (value && typeof value === "object") {
      return Object.keys(value).some((k) => k === "$out" || k === "$merge" || pipelineWrites(value[k]));
    }
    return false;
  }

  // The serializer sends what an object's toBSON() returns, not the object the checks read: another command, a
  // $out stage. No command a patch may send in a dry run needs one (the driver's own types have none).
  function carriesToBSON(value, depth) {
    if (value === null || typeof value !== "object" || depth > 100) return false;
    if (typeof value.toBSON === "function") return true;
    return Object.values(value).some((v) => carriesToBSON(v, depth + 1));
  }

  function checkCommand(command, where) {
    if (carriesToBSON(command, 0)) refuse(`${where} carrying toBSON()`);
    const name = typeof command === "string" ? command : Object.keys(command || {})[0];
    if (!READ_COMMANDS.has(String(name).toLowerCase())) refuse(`${where}(${JSON.stringify(name)})`);
    if (typeof command === "object" && pipelineWrites(command)) refuse(`${where} with $out/$merge`);
  }

  // Up to, not into, Object.prototype: mongosh's classes come from Node's own realm, not the script's.
  function* chain(proto) {
    for (let p = proto; p && Object.getPrototypeOf(p) !== null; p = Object.getPrototypeOf(p)) yield p;
  }

  function seal(p, name, wrapped) {
    const d = Object.getOwnPropertyDescriptor(p, name);
    Object.defineProperty(p, name, { value: wrapped, writable: false, configurable: false, enumerable: d.enumerable });
  }

  function guard(proto, label) {
    for (const p of chain(proto)) {
      for (const name of Object.getOwnPropertyNames(p)) {
        const d = Object.getOwnPropertyDescriptor(p, name);
        if (name === "constructor" || !d || typeof d.value !== "function") continue;
        const real = d.value;
        let wrapped = null;
        if (WRITES.test(name)) {
          wrapped = function () { refuse(`${label}.${name}`); };
        } else if (name === "aggregate") {
          wrapped = function (...args) {
            if (pipelineWrites(args)) refuse(`${label}.aggregate with $out/$merge`);
            return real.apply(this, args);
          };
        } else if (name === "runCommand" || name === "adminCommand" || name === "_runCommand" || name === "_runAdminCommand") {
          wrapped = function (command, ...rest) {
            checkCommand(command, `${label}.${name}`);
            return real.call(this, command, ...rest);
          };
        }
        if (wrapped) seal(p, name, wrapped);
      }
      Object.freeze(p);
    }
  }

  function guardProvider(provider) {
    for (const p of chain(Object.getPrototypeOf(provider))) {
      for (const name of Object.getOwnPropertyNames(p)) {
        const d = Object.getOwnPropertyDescriptor(p, name);
        if (name === "constructor" || !d || typeof d.value !== "function" || PROVIDER_READS.has(name)) continue;
        const real = d.value, at = PROVIDER_CHECKED[name];
        seal(p, name, at === undefined ? function () { refuse(`mongosh's ${name} (a write)`); }
          : function (...args) {
            if (name.startsWith("aggregate")) {
              if (pipelineWrites(args[at])) refuse(`mongosh's ${name} with $out/$merge`);
            } else {
              checkCommand(args[at], `mongosh's ${name}`);
            }
            return real.apply(this, args);
          });
      }
      Object.freeze(p);
    }
  }

  // Below the provider, the Node driver (a deliberate patch's provider.mongoClient): every message to the server
  // leaves through Connection.writeCommand (the monitor's connection shows the class); only reads and the
  // handshake pass. The prototype is not frozen (the driver's own instances must stay as they are); writeCommand is
  // fixed. Only the socket itself is left, and MONGO_READONLY_URL.
  function guardDriver(provider) {
    let connection = null;
    try {
      for (const server of provider.mongoClient.topology.s.servers.values()) connection ||= server.monitor?.connection;
    } catch (e) {
      return;  // no topology to look at: the provider's seal stands alone
    }
    let p = connection && Object.getPrototypeOf(connection);
    while (p && !Object.getOwnPropertyNames(p).includes("writeCommand")) p = Object.getPrototypeOf(p);
    if (!p) return;
    const real = p.writeCommand;
    seal(p, "writeCommand", function (message, ...rest) {
      const sent = message && (message.command || message.query);
      const command = sent && sent.$query ? sent.$query : sent;
      const name = Object.keys(command || {})[0];
      if (carriesToBSON(command, 0)) refuse("the driver's command carrying toBSON()");
      if (!WIRE_ALSO.has(String(name).toLowerCase())) checkCommand(command, "the driver's command");
      return real.call(this, message, ...rest);
    });
  }

  // The tests give stand-in classes as hcmShimTarget (mongosh refuses a `db` that is not its Database).
  let target = null, collection = null;
  try {
    target = typeof hcmShimTarget !== "undefined" ? hcmShimTarget : db;
    collection = target.getCollection("hcm_dry_run_probe");  // no server round trip: a handle
  } catch (e) {
    // no database (mongosh --nodb without a target): nothing to guard but connect()
  }
  if (collection) {
    guard(Object.getPrototypeOf(collection), "collection");
    guard(Object.getPrototypeOf(target), "db");
    if (typeof target.getMongo === "function") {
      const mongo = target.getMongo();
      guard(Object.getPrototypeOf(mongo), "mongo");
      if (mongo._serviceProvider) {  // (the stand-ins have none)
        guardProvider(mongo._serviceProvider);
        guardDriver(mongo._serviceProvider);
      }
    }
  }
  for (const name of ["connect", "Mongo"]) {
    Object.defineProperty(globalThis, name, {
      value: function () { refuse(`${name}()`); }, writable: false, configurable: false,
    });
  }
  Object.defineProperty(globalThis, "hcmPipelineWrites", { value: pipelineWrites, writable: false, configurable: false });
})();
