// relay-client.js (client/relay-client.js), the kiosk client library, with the real
// socket.io-client against the real relay binary: views filled from the snapshot and kept up
// to date, routed rooms, a collection on its own namespace, resume with `since` after a
// disconnect and after a relay restart, a new epoch, status, errors, asset URLs, and the
// classic-script build.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import vm from "node:vm";
import { io } from "socket.io-client";
import { connectRelay, VERSION } from "../client/relay-client.js";
import { accept, REPO_ROOT, RELAY_URL, RUN_ID, SOON_MS, startOwnRelay } from "./helpers.mjs";

const LOBBY_TOKEN = process.env.E2E_LOBBY_TOKEN;
const TRANSPORTS = ["websocket", "polling"];

/** A relay connection of the test's own, closed when the test ends. */
function relayFor(t, options = {}) {
  const relay = connectRelay({
    url: RELAY_URL,
    io,
    ...options,
    socketOptions: { forceNew: true, ...(options.socketOptions ?? {}) },
  });
  t.after(() => relay.close());
  return relay;
}

/** Resolves with the first `type` event of `emitter` for which `predicate` holds. */
function next(emitter, type, predicate = () => true, ms = SOON_MS, what = type) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${what} within ${ms} ms`));
    }, ms);
    const off = emitter.on(type, (value) => {
      if (!predicate(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/** Runs `action` (a webhook) and resolves with the first change of `view` that `predicate` holds
 * for. Listening starts before the webhook: its event may reach the kiosk before its 202. */
async function changed(view, predicate, action) {
  const change = next(view, "change", predicate);
  await action();
  return change;
}

/** Every change of `view`, in order. */
function record(view) {
  const changes = [];
  view.on("change", (c) => changes.push(c));
  return changes;
}

const created = (collection, key, payload) => ({ event: `${collection}.items.create`, payload, key, collection });
const updated = (collection, key, payload) => ({ event: `${collection}.items.update`, payload, keys: [key], collection });
const deleted = (collection, key) => ({ event: `${collection}.items.delete`, payload: [key], keys: [key], collection });

for (const transport of TRANSPORTS) {
  test(`a view over ${transport} is filled from the snapshot, then follows create, update and delete`, { timeout: 60_000 }, async (t) => {
    const [a, b] = [`rc-${RUN_ID}-${transport}-a`, `rc-${RUN_ID}-${transport}-b`];
    await accept(created("screens", a, { name: "A" }));
    const relay = relayFor(t, { token: LOBBY_TOKEN, device: `test-${transport}`, socketOptions: { transports: [transport] } });
    const screens = relay.collection("screens");
    const first = next(screens, "change");
    await screens.ready;
    const snapshot = await first;
    assert.equal(screens.mode, "snapshot");
    assert.equal(snapshot.action, "snapshot");
    assert.ok(snapshot.added.includes(a), JSON.stringify(snapshot));
    assert.deepEqual(screens.get(a), { id: a, name: "A" });
    assert.equal(relay.socket.io.engine.transport.name, transport);
    assert.equal(relay.connected, true);
    assert.equal(relay.status.upstream, "live");

    const changes = record(screens);
    const add = await changed(screens, (c) => c.added.includes(b), () => accept(created("screens", b, { name: "B" })));
    assert.equal(add.action, "create");
    assert.deepEqual(screens.get(b), { id: b, name: "B" });
    const upd = await changed(screens, (c) => c.updated.includes(a), () => accept(updated("screens", a, { name: "A2" })));
    assert.equal(upd.action, "update");
    assert.equal(screens.get(a).name, "A2");
    const del = await changed(screens, (c) => c.removed.includes(b), () => accept(deleted("screens", b)));
    assert.equal(del.action, "delete");
    assert.equal(screens.has(b), false);
    assert.deepEqual(
      changes.map((c) => c.action),
      ["create", "update", "delete"],
      "one change per event, pre-delete applies nothing",
    );
    assert.ok(changes.every((c, i) => i === 0 || c.seq > changes[i - 1].seq), "in seq order");
    await accept(deleted("screens", a));
  });
}

test("a view of a routed room gets its items, and loses one that moves to another room", { timeout: 60_000 }, async (t) => {
  const key = `rc-notice-${RUN_ID}`;
  const relay = relayFor(t);
  const here = relay.collection("notices", { where: { screen: 12 } });
  const there = relay.collection("notices", { where: { screen: 13 } });
  await Promise.all([here.ready, there.ready]);
  await changed(here, (c) => c.added.includes(key), () => accept(created("notices", key, { screen: 12, text: "hello" })));
  assert.equal(here.get(key).text, "hello");
  assert.equal(there.has(key), false, "not in the other room");
  const moved = next(there, "change", (c) => c.added.includes(key));
  await changed(here, (c) => c.removed.includes(key), () => accept(updated("notices", key, { screen: 13 })));
  await moved;
  assert.equal(here.has(key), false);
  assert.equal(there.get(key).screen, 13);
  await changed(there, (c) => c.removed.includes(key), () => accept(deleted("notices", key)));
});

test("a collection on its own namespace, with renamed events", { timeout: 60_000 }, async (t) => {
  const key = `rc-menu-${RUN_ID}`;
  const relay = relayFor(t);
  const menu = relay.collection("menu", { namespace: "/menu" });
  await menu.ready;
  await changed(menu, (c) => c.added.includes(key), () => accept(created("menu", key, { title: "Soup", price: 4 })));
  assert.deepEqual(menu.get(key), { id: key, title: "Soup" }, "emit_fields applied by the relay");
  const change = await changed(menu, (c) => c.updated.includes(key), () => accept(updated("menu", key, { title: "Stew" })));
  assert.equal(change.action, "update", "menu:changed carries its action");
  assert.equal(menu.get(key).title, "Stew");
  await changed(menu, (c) => c.removed.includes(key), () => accept(deleted("menu", key)));
});

test("after a disconnect a view resumes with since: the missed events as a replay, none twice", { timeout: 60_000 }, async (t) => {
  const key = `rc-resume-${RUN_ID}`;
  await accept(created("screens", key, { name: "before" }));
  const relay = relayFor(t, { token: LOBBY_TOKEN });
  const screens = relay.collection("screens");
  await screens.ready;
  const changes = record(screens);
  relay.socket.disconnect();
  await accept(updated("screens", key, { name: "missed 1" }));
  await accept(updated("screens", key, { name: "missed 2" }));
  relay.socket.connect();
  await next(screens, "change", (c) => c.updated.includes(key) && screens.get(key).name === "missed 2");
  assert.equal(screens.mode, "replay", "resumed, not a fresh snapshot");
  await changed(screens, (c) => c.updated.includes(key) && screens.get(key).name === "live", () => accept(updated("screens", key, { name: "live" })));
  const mine = changes.filter((c) => c.updated.includes(key));
  assert.deepEqual(
    mine.map((c) => c.event.records[0].name),
    ["missed 1", "missed 2", "live"],
    "each missed event once, in order, then live",
  );
  await accept(deleted("screens", key));
});

test("status follows relay.status; a wrong token is an error event, not an exception", { timeout: 60_000 }, async (t) => {
  const relay = relayFor(t, { token: LOBBY_TOKEN });
  const status = await next(relay, "status");
  assert.deepEqual(Object.keys(status).sort(), ["epoch", "seq", "since", "upstream"]);
  assert.equal(relay.status, status);

  const refused = relayFor(t, { token: "not-the-token-0123456789", socketOptions: { reconnection: false } });
  refused.collection("screens");
  const error = await next(refused, "error");
  assert.match(error.message, /the kiosk token is not valid/);
  assert.equal(refused.connected, false);
});

test("a view of a collection the token may not read says why", { timeout: 60_000 }, async (t) => {
  const relay = relayFor(t, { token: LOBBY_TOKEN });
  const notices = relay.collection("notices");
  const error = await next(notices, "error");
  assert.match(error.message, /may not read "notices"/);
  assert.equal(notices.loaded, false);
});

test("asset URLs carry the token and Directus's transformation parameters", () => {
  const relay = connectRelay({ url: "http://relay.local:8080/", token: "t/k n", io: () => ({ on() {}, onAny() {}, connect() {}, disconnect() {} }) });
  try {
    assert.equal(relay.asset("f1"), "http://relay.local:8080/assets/f1?token=t%2Fk%20n");
    assert.equal(
      relay.asset({ id: "a b", title: "x" }, { width: 800, height: 600, fit: "cover", format: "webp", quality: 80, withoutEnlargement: true, other: 1 }),
      "http://relay.local:8080/assets/a%20b?token=t%2Fk%20n&width=800&height=600&fit=cover&quality=80&format=webp&withoutEnlargement=true",
    );
    assert.equal(relay.asset(null), "");
  } finally {
    relay.close();
  }
  const anonymous = connectRelay({ url: "http://relay.local:8080", io: () => ({ on() {}, onAny() {}, connect() {}, disconnect() {} }) });
  assert.equal(anonymous.asset("f1", { key: "thumb" }), "http://relay.local:8080/assets/f1?key=thumb");
  anonymous.close();
  assert.throws(() => connectRelay({ url: "http://x" }), /socket.io-client is not loaded/);
});

test("the relay serves client/relay-client.js, its classic build and socket.io-client byte for byte", async () => {
  for (const [path, file] of [
    ["/relay-client.js", "client/relay-client.js"],
    ["/relay-client.classic.js", "client/relay-client.classic.js"],
    ["/socket.io/socket.io.min.js", "client/vendor/socket.io.min.js"],
  ]) {
    const res = await fetch(RELAY_URL + path); // asks for gzip, and decompresses
    assert.equal(res.status, 200, path);
    assert.equal(res.headers.get("content-encoding"), "gzip", path);
    assert.equal(await res.text(), readFileSync(join(REPO_ROOT, file), "utf8"), `${path} is ${file}`);
  }
});

test("the classic-script build is current and defines connectRelay", () => {
  execFileSync(process.execPath, [join(REPO_ROOT, "client/build-classic.mjs"), "--check"], { stdio: "pipe" });
  const context = { io, setTimeout, clearTimeout };
  vm.createContext(context);
  vm.runInContext(readFileSync(join(REPO_ROOT, "client/relay-client.classic.js"), "utf8"), context);
  assert.equal(typeof context.connectRelay, "function");
  assert.equal(context.RelayClient.VERSION, VERSION);
  const relay = context.connectRelay({ url: RELAY_URL, token: "k" });
  assert.equal(relay.asset("f"), `${RELAY_URL}/assets/f?token=k`);
  relay.close();
});

/** A relay of the test's own, in webhook mode, with `screens`. */
const OWN = (secret) => `shutdown_grace = "2s"
[webhook]
secret = "${secret}"
[clients]
allow_anonymous = true
[[collections]]
name = "screens"
`;

test("a relay restart: the view comes back by itself and resumes (same epoch: a replay)", { timeout: 120_000 }, async (t) => {
  const secret = `rc-secret-${RUN_ID}-0123456789`;
  let relayProcess = await startOwnRelay(OWN(secret), { secret });
  t.after(() => relayProcess.stop());
  const relay = connectRelay({ url: relayProcess.url, io, socketOptions: { forceNew: true, reconnectionDelay: 200, reconnectionDelayMax: 1000 } });
  t.after(() => relay.close());
  const screens = relay.collection("screens");
  await screens.ready;
  await changed(screens, (c) => c.added.includes("1"), () => relayProcess.post(created("screens", "1", { name: "before restart" })));
  const epoch = relay.status.epoch;

  const gone = next(relay, "disconnect");
  assert.equal(await relayProcess.stop(), 0, "the relay stopped cleanly");
  t.diagnostic(`disconnected: ${(await gone).reason}`);
  const back = next(relay, "status", () => relay.connected, 30_000, "relay.status after the restart");
  relayProcess = await startOwnRelay(OWN(secret), { dir: relayProcess.dir, port: relayProcess.port, secret });
  await back;
  assert.equal(relay.status.epoch, epoch, "a clean restart keeps the epoch");
  await changed(screens, (c) => c.updated.includes("1"), () => relayProcess.post(updated("screens", "1", { name: "after restart" })));
  assert.equal(screens.get("1").name, "after restart");
  assert.equal(screens.mode, "replay", "resumed with since");
});

test("a relay with a new epoch: the view takes a snapshot and drops what is gone", { timeout: 120_000 }, async (t) => {
  const secret = `rc-secret-${RUN_ID}-epoch-0123456789`;
  let relayProcess = await startOwnRelay(OWN(secret), { secret });
  t.after(() => relayProcess.stop());
  // Reconnected by hand below, once the new relay holds its item.
  const relay = connectRelay({ url: relayProcess.url, io, socketOptions: { forceNew: true, reconnection: false } });
  t.after(() => relay.close());
  const screens = relay.collection("screens");
  await screens.ready;
  await changed(screens, (c) => c.added.includes("old"), () => relayProcess.post(created("screens", "old", { name: "only on the first relay" })));
  const gone = next(relay, "disconnect");
  await relayProcess.stop();
  await gone;
  // Another relay, with a state of its own, on the same address.
  const dir = mkdtempSync(join(tmpdir(), "relay-own-"));
  relayProcess = await startOwnRelay(OWN(secret), { dir, port: relayProcess.port, secret });
  await relayProcess.post(created("screens", "new", { name: "only on the second" }));
  const snapshot = next(screens, "change", (c) => c.action === "snapshot", 30_000, "a snapshot from the new relay");
  relay.socket.connect();
  const change = await snapshot;
  assert.deepEqual(change.removed, ["old"]);
  assert.deepEqual(change.added, ["new"]);
  assert.deepEqual([...screens.keys()], ["new"]);
  await changed(screens, (c) => c.updated.includes("new"), () => relayProcess.post(updated("screens", "new", { name: "live" })));
  assert.equal(screens.get("new").name, "live");
});

test("an event too large to send whole makes the view take a snapshot", { timeout: 120_000 }, async (t) => {
  const secret = `rc-secret-${RUN_ID}-big-0123456789`;
  const relayProcess = await startOwnRelay(`${OWN(secret)}[limits]\nmax_event_bytes = "1KiB"\n`, { secret });
  t.after(() => relayProcess.stop());
  const relay = connectRelay({ url: relayProcess.url, io, socketOptions: { forceNew: true } });
  t.after(() => relay.close());
  const screens = relay.collection("screens");
  await screens.ready;
  const big = "x".repeat(4096);
  const refreshed = next(screens, "change", (c) => c.action === "snapshot" && c.added.includes("big"), SOON_MS, "a snapshot with the large item");
  await relayProcess.post(created("screens", "big", { name: big }));
  await refreshed;
  assert.equal(screens.get("big").name, big, "the whole record, from the snapshot");
});

test("an operator's commands reach a relay-client.js screen: acknowledged, resync takes a snapshot, the page's own names", { timeout: 120_000 }, async (t) => {
  const secret = `commands-secret-${RUN_ID}-0123456789`;
  const admin = `commands-admin-${RUN_ID}-0123456789`;
  const own = await startOwnRelay(`clients.allow_anonymous = true
[webhook]
secret = "${secret}"
[admin]
token = "${admin}"
[[collections]]
name = "screens"
`, { secret });
  t.after(() => own.stop());
  await own.post({ event: "screens.items.create", collection: "screens", key: "1", payload: { id: 1, name: "Lobby" } });
  const relay = connectRelay({ url: own.url, io, device: "lobby-left", socketOptions: { forceNew: true } });
  t.after(() => relay.close());
  const screens = relay.collection("screens");
  await screens.ready;
  const seen = [];
  relay.on("command", (c) => {
    seen.push(c.command);
    if (c.command === "show-page") c.handled = true;
  });
  const command = async (body) => {
    const res = await fetch(`${own.url}/api/screens/lobby-left/commands`, {
      method: "POST",
      headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 202);
    return res.json();
  };

  const snapshot = next(screens, "change", (c) => c.action === "snapshot", 10_000, "a snapshot after resync");
  assert.equal((await command({ command: "resync" })).acked, true);
  assert.deepEqual((await snapshot).updated.concat((await snapshot).added), [], "nothing changed, all taken afresh");
  assert.equal(screens.get("1").name, "Lobby");
  assert.equal((await command({ command: "show-page", args: { page: 2 } })).acked, true, "a name the page handles");
  const dance = await command({ command: "dance" });
  assert.equal(dance.acked, false, "a name nobody handles is not acknowledged");
  assert.match(dance.declined, /does not handle the command "dance"/);
  assert.deepEqual(seen, ["resync", "show-page", "dance"]);
  // Live events still reach the view after the resync.
  const live = next(screens, "change", (c) => c.action === "update");
  await own.post({ event: "screens.items.update", collection: "screens", keys: ["1"], payload: { name: "Hall" } });
  await live;
  assert.equal(screens.get("1").name, "Hall");
});
