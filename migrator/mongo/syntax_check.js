// The syntax check of a JS patch, before the patch's `running` record is written. It compiles the file exactly as
// mongosh's --file would (mongosh's own async rewriter, then V8's compiler) without running any of it, and prints
// one marked JSON line: null, or the error and its line. Run by plain node (the node mongosh runs on) with
// HCM_MONGOSH naming mongosh's script: the rewriter is the package mongosh itself loads, for a tenth of a mongosh
// start; or, for a mongosh that is no node script, by `mongosh --nodb --exposeAsyncRewriter` (its __asyncRewrite).
(function () {
  "use strict";
  const mark = "\x1ehcm-syntax\x1e";
  const say = typeof print === "function" ? print : (text) => process.stdout.write(text + "\n");
  const rewrite = typeof __asyncRewrite === "function" ? __asyncRewrite : mongoshRewriter();
  if (!rewrite) {  // another mongosh build: say so, never call the patch wrong
    say(mark + JSON.stringify({ unsupported: "this mongosh has no --exposeAsyncRewriter" }));
    return;
  }
  const vm = require("vm");
  const source = require("fs").readFileSync(process.env.HCM_PATCH_FILE, "utf8");  // as mongosh's load() reads it
  let problem = null;
  try {
    new vm.Script(rewrite(source));  // compiled, not run
  } catch (e) {
    const line = e.loc ? e.loc.line : lineOf(source);  // Babel's own error carries the line in the file
    problem = { name: e.name || "Error", message: String(e.message).split("\n")[0].replace(/ \(\d+:\d+\)$/, ""), line };
  }
  say(mark + JSON.stringify(problem));

  // What mongosh's __asyncRewrite is: its shell evaluator's AsyncWriter, found as mongosh's own require finds it
  // (cli-repl -> @mongosh/shell-evaluator -> @mongosh/async-rewriter2); null when that chain is not there.
  function mongoshRewriter() {
    if (!process.env.HCM_MONGOSH) return null;
    try {
      const path = require("path");
      const from = (name, file) => require.resolve(name, { paths: [path.dirname(file)] });
      const evaluator = from("@mongosh/shell-evaluator", from("@mongosh/cli-repl", process.env.HCM_MONGOSH));
      const AsyncWriter = require(from("@mongosh/async-rewriter2", evaluator)).default;
      const writer = new AsyncWriter();
      return (text) => writer.process(text);
    } catch (e) {
      return null;
    }
  }

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
