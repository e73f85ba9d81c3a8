// What the real-Directus test files share: their environment from run.sh, Directus's env file
// as start.sh writes it, and a free port.

import { readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";

/** An environment variable run.sh sets; a clear error when the file is run without it. */
export function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the suite with bash e2e/directus/run.sh`);
  return value;
}

/** DIR/env as written by start.sh (export NAME=value, shell-quoted with %q). */
export function directusEnv(dir = required("E2E_DIRECTUS_DIR")) {
  const out = {};
  for (const line of readFileSync(join(dir, "env"), "utf8").split("\n")) {
    const m = /^export ([A-Z_]+)=(.*)$/.exec(line);
    if (!m) continue;
    let v = m[2];
    if (v.startsWith("'") && v.endsWith("'")) v = v.slice(1, -1);
    out[m[1]] = v.replace(/\\(.)/g, "$1");
  }
  return out;
}

/** A free port on the loopback address, asked of the OS. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}
