"""The MongoDB / DocumentDB side: data patches in mongo/, run as dry runs unless told to run.

  connection -- the client, with every connection failure as one line
  patches    -- finding patch files, running Python (pymongo) and JavaScript (mongosh) ones
  readonly   -- the read-only view a Python patch gets in a dry run
  log        -- the applied_patches collection: running, applied, failed, ... records
  state      -- what the log says about each patch: pending, applied, changed, blocked
  lock       -- one runner at a time, kept by a heartbeat
  interrupt  -- SIGTERM during a real run: a logged failure of the running patch
  actions    -- status, apply, resolve, accept-changes: what the CLI calls
"""
