// Writes relay-client.classic.js, relay-client.js for a classic <script>: the module's text
// without its `export` keywords, inside a function that puts `connectRelay` and `RelayClient`
// ({connectRelay, VERSION}) on the global object. No bundler: the module imports nothing.
//
//   node client/build-classic.mjs           # write client/relay-client.classic.js
//   node client/build-classic.mjs --check   # exit 1 when the committed file is stale

import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const source = readFileSync(join(here, "relay-client.js"), "utf8");
const target = join(here, "relay-client.classic.js");

const exported = [];
const lines = source.split("\n").map((line, i) => {
  if (/^\s*import\b/.test(line) || /^\s*export\s+(default|\{|\*)/.test(line)) {
    throw new Error(`relay-client.js:${i + 1}: only "export function|const|class name" can be turned into a classic script`);
  }
  const m = /^export\s+(?:async\s+)?(function|const|let|class)\s+([A-Za-z_$][\w$]*)/.exec(line);
  if (!m) return line;
  exported.push(m[2]);
  return line.slice("export ".length);
});

const out = [
  "// GENERATED from relay-client.js by client/build-classic.mjs: edit relay-client.js, then run",
  "// `node client/build-classic.mjs`. The same library for a classic <script>: it defines the",
  "// globals `connectRelay` and `RelayClient` ({connectRelay, VERSION}).",
  "(function (global) {",
  '"use strict";',
  ...lines,
  `var RelayClient = { ${exported.join(", ")} };`,
  "global.RelayClient = RelayClient;",
  "global.connectRelay = connectRelay;",
  '})(typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : this);',
  "",
].join("\n");

if (process.argv.includes("--check")) {
  let current = "";
  try {
    current = readFileSync(target, "utf8");
  } catch {}
  if (current !== out) {
    console.error("client/relay-client.classic.js is stale: run `node client/build-classic.mjs`");
    process.exit(1);
  }
  console.log("client/relay-client.classic.js is up to date");
} else {
  writeFileSync(target, out);
  console.log(`wrote client/relay-client.classic.js (${exported.join(", ")})`);
}
