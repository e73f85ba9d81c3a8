// The kiosk half of release/smoke.sh: one real socket.io-client kiosk per transport connects
// to a relay with a kiosk token, subscribes to a collection, and a Directus Flow webhook
// (X-Relay-Secret) creating an item there must reach every kiosk as the matching data.create
// (collection, keys, payload, record). A webhook with a wrong secret must be refused with 401.
//
//   node e2e/smoke-kiosk.mjs --url http://127.0.0.1:8080 --token TOKEN --secret SECRET \
//     --collection screens [--path /hooks/directus] [--timeout 60]
//
// Prints one "ok" line per check; on failure prints "FAIL ..." and exits 1, also when the
// whole run takes longer than --timeout seconds (a relay under qemu is slow, not that slow).
// socket.io-client comes from e2e/node_modules (npm ci in e2e/, as e2e/run.sh does).

import { isDeepStrictEqual, parseArgs } from "node:util";
import { io } from "socket.io-client";

const sockets = [];
const { values: opt } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string" },
    secret: { type: "string" },
    collection: { type: "string" },
    path: { type: "string", default: "/hooks/directus" },
    timeout: { type: "string", default: "60" },
  },
});
for (const name of ["url", "token", "secret", "collection"]) {
  if (!opt[name]) fail(`--${name} is required (see the top of e2e/smoke-kiosk.mjs)`);
}
const TIMEOUT_MS = Number(opt.timeout) * 1000;
const TRANSPORTS = ["websocket", "polling"];
const started = performance.now();
const ms = () => `${Math.round(performance.now() - started)} ms`;

function fail(message) {
  console.log(`  FAIL  kiosk: ${message}`);
  for (const s of sockets) s.disconnect();
  process.exit(1);
}
const ok = (message) => console.log(`  ok    kiosk: ${message} (${ms()})`);

setTimeout(() => fail(`not done within ${opt.timeout} s`), TIMEOUT_MS).unref();

/** Connects one kiosk; resolves to {socket, events, waitFor}. */
function connect(transport) {
  return new Promise((resolve) => {
    const socket = io(opt.url, {
      transports: [transport],
      upgrade: false,
      reconnection: false,
      forceNew: true,
      timeout: TIMEOUT_MS,
      auth: { token: opt.token, collections: [opt.collection] },
    });
    sockets.push(socket);
    const events = [];
    let wake = () => {};
    socket.onAny((name, body) => {
      events.push({ name, body });
      wake();
    });
    /** The first event (already received or still to come) for which `match` is true. */
    const waitFor = async (match) => {
      for (;;) {
        const found = events.find(match);
        if (found) return found;
        await new Promise((r) => (wake = r));
      }
    };
    socket.on("connect_error", (e) => fail(`${transport}: connect_error: ${e.message}`));
    socket.on("disconnect", (reason) => {
      if (reason !== "io client disconnect") fail(`${transport}: disconnected: ${reason}`);
    });
    socket.on("connect", () => resolve({ socket, events, waitFor, transport }));
  });
}

async function post(secret, body) {
  const url = new URL(opt.path, opt.url);
  try {
    const res = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", "x-relay-secret": secret },
      body: JSON.stringify(body),
    });
    return { status: res.status, text: await res.text() };
  } catch (e) {
    fail(`POST ${url}: ${e.cause?.message ?? e.message}`);
  }
}

const kiosks = [];
for (const transport of TRANSPORTS) {
  const kiosk = await connect(transport);
  const ack = await new Promise((resolve) =>
    kiosk.socket.timeout(TIMEOUT_MS).emit("subscribe", { collections: [opt.collection] }, (err, a) => {
      if (err) fail(`${transport}: no answer to subscribe`);
      resolve(a);
    }),
  );
  if (ack?.ok !== true) fail(`${transport}: subscribe to "${opt.collection}" refused: ${JSON.stringify(ack)}`);
  ok(`${transport}: connected with the token, subscribed to "${opt.collection}" (mode ${ack.collections?.[opt.collection]?.mode})`);
  kiosks.push(kiosk);
}

// The item is new to the relay, so the change is a data.create with record = {id, ...payload}.
const key = `smoke-${process.pid}-${Date.now()}`;
const payload = { name: "Smoke test", status: "published", at: new Date().toISOString() };
const body = { event: `${opt.collection}.items.create`, collection: opt.collection, key, payload };

const refused = await post(`${opt.secret}-wrong`, body);
if (refused.status !== 401) fail(`a webhook with a wrong secret answered ${refused.status} ${refused.text}, expected 401`);
ok("a webhook with a wrong secret is refused (401)");

const sentAt = performance.now();
const accepted = await post(opt.secret, body);
if (accepted.status !== 202) fail(`the webhook answered ${accepted.status} ${accepted.text}, expected 202`);
ok(`webhook ${body.event} key ${key} accepted (202)`);

for (const kiosk of kiosks) {
  const event = await kiosk.waitFor((e) => e.name.startsWith("data.") && e.body?.keys?.includes(key));
  const got = event.body;
  const want = { collection: opt.collection, keys: [key], payload, record: { id: key, ...payload } };
  const problems = [];
  if (event.name !== "data.create") problems.push(`event ${event.name}, expected data.create`);
  for (const [field, value] of Object.entries(want)) {
    if (!isDeepStrictEqual(got[field], value)) {
      problems.push(`${field} ${JSON.stringify(got[field])}, expected ${JSON.stringify(value)}`);
    }
  }
  if (!Number.isInteger(got.seq)) problems.push(`seq ${JSON.stringify(got.seq)} is not an integer`);
  if (problems.length > 0) fail(`${kiosk.transport}: ${problems.join("; ")}`);
  const stray = kiosk.events.filter((e) => e.name.startsWith("data.") && e !== event);
  if (stray.length > 0) fail(`${kiosk.transport}: unexpected events ${stray.map((e) => e.name).join(", ")}`);
  ok(`${kiosk.transport}: data.create for ${opt.collection}/${key}, seq ${got.seq}, ${Math.round(performance.now() - sentAt)} ms after the webhook`);
}

for (const s of sockets) s.disconnect();
process.exit(0);
