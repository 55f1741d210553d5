"""The MongoDB / DocumentDB side: data patches in mongo/, run as dry runs unless told to run.

  connection   -- the client, with every connection failure as one line
  patches      -- finding and naming patch files, templates for new ones
  python_patch -- running a pymongo patch (sealed in a dry run: no real client, no secrets)
  js_patch     -- running a mongosh patch (its own process group; dry_run_shim.js refuses writes in a dry run;
                  syntax_check.js compiles it with mongosh's rewriter, on node, before its record)
  readonly     -- the read-only views a Python patch gets in a dry run
  log          -- the applied_patches collection: running, applied, failed, ... records
  state        -- what the log says about each patch: pending, applied, changed, blocked
  lock         -- one runner at a time, kept by a heartbeat
  actions      -- status, apply, resolve, accept-changes (called by migrator.commands.mongo)
"""
