// The dry-run shim, loaded by mongosh after `db` is connected and before the patch: every write
// method of mongosh's Database, Collection, Mongo and Bulk objects throws before it reaches the
// server, so a patch that forgets `if (DRY_RUN)` cannot write. The patched prototypes are frozen and
// connect()/new Mongo() are refused. A careless patch is stopped; a deliberate one could still find a
// way, e.g. through mongosh's _serviceProvider and the Node driver under it: MONGO_READONLY_URL, the URL
// a dry run's mongosh gets, makes the server refuse those writes (and Landlock keeps .env out of reach).
(function () {
  "use strict";
  const WRITES = /^(insert|update|delete|remove|replace|save|findOneAnd|findAndModify|bulkWrite|initialize\w*BulkOp|drop|create|rename|hideIndex|unhideIndex|grant|revoke|shutdown|fsync|setProfiling|killOp|compact|reIndex|convertToCapped|enableSharding|shard|moveChunk|setLogLevel|setFeatureCompatibility|clone|copy|rotate|execute|mapReduce|cleanupOrphaned|checkMetadata|configureQueryAnalyzer)/;
  // runCommand/adminCommand: only these read commands pass (aggregate only without $out/$merge).
  const READ_COMMANDS = new Set(["ping", "hello", "ismaster", "buildinfo", "serverstatus", "hostinfo",
    "connectionstatus", "dbstats", "collstats", "count", "distinct", "find", "getmore", "killcursors",
    "listcollections", "listindexes", "listdatabases", "explain", "aggregate", "datasize", "whatsmyuri",
    "getparameter", "getcmdlineopts", "currentop", "validate", "listsearchindexes"]);

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

  function checkCommand(command, where) {
    const name = typeof command === "string" ? command : Object.keys(command || {})[0];
    if (!READ_COMMANDS.has(String(name).toLowerCase())) refuse(`${where}(${JSON.stringify(name)})`);
    if (typeof command === "object" && pipelineWrites(command)) refuse(`${where} with $out/$merge`);
  }

  function guard(proto, label) {
    for (let p = proto; p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
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
        if (wrapped) {
          Object.defineProperty(p, name, { value: wrapped, writable: false, configurable: false, enumerable: d.enumerable });
        }
      }
      Object.freeze(p);
    }
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
    if (typeof target.getMongo === "function") guard(Object.getPrototypeOf(target.getMongo()), "mongo");
  }
  for (const name of ["connect", "Mongo"]) {
    Object.defineProperty(globalThis, name, {
      value: function () { refuse(`${name}()`); }, writable: false, configurable: false,
    });
  }
  Object.defineProperty(globalThis, "hcmPipelineWrites", { value: pipelineWrites, writable: false, configurable: false });
})();
