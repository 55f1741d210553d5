// The syntax check of a JS patch, run by `mongosh --nodb --exposeAsyncRewriter` before the patch's `running`
// record is written. It compiles the file exactly as mongosh's --file would (mongosh's own async rewriter, then
// V8's compiler) without running any of it, and prints one marked JSON line: null, or the error and its line.
(function () {
  "use strict";
  const mark = "\x1ehcm-syntax\x1e";
  if (typeof __asyncRewrite !== "function") {  // another mongosh build: say so, never call the patch wrong
    print(mark + JSON.stringify({ unsupported: "this mongosh has no --exposeAsyncRewriter" }));
    return;
  }
  const vm = require("vm");
  const source = require("fs").readFileSync(process.env.HCM_PATCH_FILE, "utf8");  // as mongosh's load() reads it
  let problem = null;
  try {
    new vm.Script(__asyncRewrite(source));  // compiled, not run
  } catch (e) {
    const line = e.loc ? e.loc.line : lineOf(source);  // Babel's own error carries the line in the file
    problem = { name: e.name || "Error", message: String(e.message).split("\n")[0].replace(/ \(\d+:\d+\)$/, ""), line };
  }
  print(mark + JSON.stringify(problem));

  // V8 rejected the rewritten code (e.g. an invalid regular expression): its line in the file itself.
  function lineOf(text) {
    try {
      new vm.Script(text, { filename: "patch" });
    } catch (e) {
      const at = /^patch:(\d+)/.exec(String(e.stack));
      if (at) return Number(at[1]);
    }
    return null;
  }
})();
