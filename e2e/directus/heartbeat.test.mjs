// The site's heartbeat row in a REAL Directus 12.4.0 (run by e2e/directus/run.sh, after
// relay.test.mjs): `setup-flow` creates the collection, `check` says the relay's read-only user
// may not write it until it is given create and update, and a running relay keeps its row up
// to date as a named screen comes and goes missing.

import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { io } from "socket.io-client";
import { directusEnv, freePort, required } from "./lib.mjs";

const WORK = required("E2E_WORK");
const RELAY_BIN = required("E2E_RELAY_BIN");
const COLLECTION = "relay_sites";
const SITE = `e2e-site-${Date.now().toString(36)}`;
const PATIENCE_MS = 30_000;

const env = directusEnv();
const DIRECTUS_URL = `http://127.0.0.1:${env.DIRECTUS_PORT}`;

async function api(method, path, body) {
  const res = await fetch(DIRECTUS_URL + path, {
    method,
    headers: { authorization: `Bearer ${env.DIRECTUS_ADMIN_TOKEN}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`Directus ${method} ${path} -> HTTP ${res.status}: ${text.slice(0, 500)}`);
  return text ? JSON.parse(text) : null;
}

function relayCommand(args, extraEnv = {}) {
  return new Promise((resolve) => {
    execFile(RELAY_BIN, args, { env: { PATH: process.env.PATH, ...extraEnv }, timeout: 60_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? error.code : 0, out: `${stdout}${stderr}` }));
  });
}

test("the site's heartbeat row in a real Directus follows a named screen", { timeout: 180_000 }, async (t) => {
  const port = await freePort();
  const config = join(WORK, "relay-heartbeat.toml");
  const secret = `heartbeat-secret-${Date.now().toString(36)}0123456789`;
  writeFileSync(config, `listen = "127.0.0.1:${port}"
state_dir = "${join(WORK, "state-heartbeat")}"
site_name = "${SITE}"
clients.allow_anonymous = true
clients.missing_after = "2s"
[webhook]
secret = "${secret}"
[directus]
url = "${DIRECTUS_URL}"
token = "${env.DIRECTUS_RELAY_TOKEN}"
mode = "poll"
heartbeat_collection = "${COLLECTION}"
[[collections]]
name = "screens"
`);

  const setup = await relayCommand(["setup-flow", "--config", config, "--relay-url", `http://127.0.0.1:${port}/hooks/directus`],
    { DIRECTUS_ADMIN_TOKEN: env.DIRECTUS_ADMIN_TOKEN });
  assert.equal(setup.code, 0, setup.out);
  assert.match(setup.out, new RegExp(`(created the collection|the heartbeat collection) "${COLLECTION}"`), setup.out);
  const fields = (await api("GET", `/fields/${COLLECTION}`)).data.map((f) => f.field).sort();
  for (const f of ["site", "screens_online", "screens_missing", "missing_screens", "upstream", "updated", "memory_bytes"]) {
    assert.ok(fields.includes(f), `field ${f} in ${fields}`);
  }

  const refused = await relayCommand(["check", "--config", config]);
  assert.notEqual(refused.code, 0, "the read-only relay user may not write the row yet");
  assert.match(refused.out, new RegExp(`FAIL\\s+write ${COLLECTION}`), refused.out);

  // Give the relay's policy create and update on the collection, as the README says.
  const policy = (await api("GET", `/policies?filter[name][_eq]=${encodeURIComponent("Relay (read-only)")}`)).data[0].id;
  await api("POST", "/permissions", ["create", "update"].map((action) =>
    ({ policy, collection: COLLECTION, action, fields: ["*"], permissions: {} })));
  const allowed = await relayCommand(["check", "--config", config]);
  assert.equal(allowed.code, 0, allowed.out);
  assert.match(allowed.out, new RegExp(`ok\\s+write ${COLLECTION}`), allowed.out);

  const relay = spawn(RELAY_BIN, ["--config", config], { env: { PATH: process.env.PATH }, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  relay.stderr.on("data", (d) => (log += d));
  t.after(() => relay.kill("SIGTERM"));
  const row = async (ok) => {
    const deadline = Date.now() + PATIENCE_MS;
    for (;;) {
      const found = await api("GET", `/items/${COLLECTION}/${SITE}`).then((r) => r.data, () => null);
      if (found && ok(found)) return found;
      assert.ok(Date.now() < deadline, `the row never matched: ${JSON.stringify(found)}\n${log.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  };
  const kiosk = await new Promise((resolve, reject) => {
    const deadline = Date.now() + PATIENCE_MS;
    const attempt = () => {
      const socket = io(`http://127.0.0.1:${port}`, { forceNew: true, reconnection: false, auth: { device: "hall-left" } });
      socket.once("connect", () => resolve(socket));
      socket.once("connect_error", () => (Date.now() < deadline ? setTimeout(attempt, 250) : reject(new Error(log))));
    };
    attempt();
  });
  const online = await row((r) => r.screens_online === 1);
  assert.equal(online.upstream, "live");
  assert.ok(Number(online.memory_bytes) > 0, JSON.stringify(online));
  kiosk.disconnect();
  const missing = await row((r) => r.screens_missing === 1);
  assert.equal(missing.missing_screens, "hall-left");
  assert.equal(missing.screens_online, 0);
});
