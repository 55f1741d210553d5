"""The MongoDB / DocumentDB side: data patches in mongo/, run as dry runs unless told to run.

  connection -- the client, with every connection failure as one line
  patches    -- finding patch files, running Python (pymongo) and JavaScript (mongosh) ones
  readonly   -- the read-only view a Python patch gets in a dry run
  log        -- the applied_patches collection: the record of every real application
  lock       -- one runner at a time
  actions    -- status, apply, history: what the CLI calls
"""
