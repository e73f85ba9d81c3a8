// A site's bad days with the real socket.io-client, each against a relay of its own (its own
// port, state directory and limits): every screen powering on at once and asking for a
// snapshot larger than the relay's snapshot budget, and a restart in the middle of the stream.

import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { io } from "socket.io-client";
import { freePort, report, startOwnRelay } from "./helpers.mjs";

const SECRET = "baddays-secret-0123456789";
const PATIENCE_MS = 60_000;

/** A relay of the test's own with `toml`; the same `dir` and `port` restart it. */
const startRelay = (dir, port, toml) => startOwnRelay(toml, { dir, port, secret: SECRET });

const CONFIG = `clients.allow_anonymous = true
[webhook]
secret = "${SECRET}"
[[collections]]
name = "screens"
`;

/** Connects a kiosk as a browser page does (long-polling first, then WebSocket). */
function kiosk(url, auth) {
  return io(url, { forceNew: true, reconnection: false, auth, timeout: PATIENCE_MS });
}

function subscribe(socket, request) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no subscribe answer in time")), PATIENCE_MS);
    socket.emit("subscribe", request, (ack) => {
      clearTimeout(timer);
      resolve(ack);
    });
  });
}

test("thirty screens powering on at once all get a snapshot larger than the relay's snapshot budget", { timeout: 180_000 }, async (t) => {
  const relay = await startRelay(mkdtempSync(join(tmpdir(), "relay-storm-")), await freePort(),
    `${CONFIG}[limits]\nsnapshot_bytes = "1MiB"\n`);
  t.after(() => relay.stop());
  const pad = "x".repeat(4000);
  for (let key = 0; key < 300; key++) {
    await relay.post({ event: "screens.items.create", collection: "screens", key: String(key), payload: { pad } });
  }
  const started = performance.now();
  const screens = Array.from({ length: 30 }, () => kiosk(relay.url, { collections: ["screens"] }));
  t.after(() => screens.forEach((s) => s.close()));
  const acks = await Promise.all(screens.map((socket) => new Promise((resolve, reject) => {
    socket.on("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
    socket.on("connect", () => subscribe(socket, { collections: ["screens"] }).then(resolve, reject));
  })));
  const ms = performance.now() - started;
  for (const ack of acks) {
    assert.equal(ack.ok, true, JSON.stringify(ack).slice(0, 200));
    assert.equal(ack.collections.screens.mode, "snapshot");
    assert.equal(ack.collections.screens.items.length, 300, "the whole collection");
  }
  const metrics = await fetch(`${relay.url}/metrics`).then((r) => r.text());
  assert.match(metrics, /^relay_kiosk_overflows_total 0$/m, "no screen was cut off");
  report(t, `storm: 30 screens, each a 1.2 MB snapshot, a 1 MiB budget: all answered in ${ms.toFixed(0)} ms`);
});

test("a screen that missed events around a restart gets exactly those events, not a snapshot", { timeout: 120_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "relay-restart-"));
  const port = await freePort();
  let relay = await startRelay(dir, port, CONFIG);
  t.after(() => relay.stop());
  for (let key = 1; key <= 3; key++) {
    await relay.post({ event: "screens.items.create", collection: "screens", key: String(key), payload: { name: `Screen ${key}` } });
  }
  let screen = kiosk(relay.url, { collections: ["screens"] });
  await new Promise((resolve) => screen.on("connect", resolve));
  const first = await subscribe(screen, { collections: ["screens"] });
  assert.equal(first.collections.screens.mode, "snapshot");
  const since = { epoch: first.epoch, seq: first.seq };
  screen.close();

  // Two changes the screen misses while the relay is up, then a clean restart, then one more.
  await relay.post({ event: "screens.items.update", collection: "screens", keys: ["1"], payload: { name: "Lobby" } });
  await relay.post({ event: "screens.items.delete", collection: "screens", keys: ["2"] });
  assert.equal(await relay.stop(), 0, "a clean stop");
  relay = await startRelay(dir, port, CONFIG);
  await relay.post({ event: "screens.items.create", collection: "screens", key: "4", payload: { name: "Hall" } });

  screen = kiosk(relay.url, { collections: ["screens"] });
  t.after(() => screen.close());
  const events = [];
  screen.onAny((name, body) => name.startsWith("data.") && events.push({ name, seq: body.seq, keys: body.keys }));
  await new Promise((resolve) => screen.on("connect", resolve));
  const resumed = await subscribe(screen, { collections: ["screens"], since });
  assert.equal(resumed.epoch, since.epoch, "the epoch goes on after a clean restart");
  assert.equal(resumed.collections.screens.mode, "replay", JSON.stringify(resumed));
  const expected = resumed.seq - since.seq;
  const deadline = Date.now() + PATIENCE_MS;
  while (events.length < expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(events.map((e) => e.seq), Array.from({ length: expected }, (_, i) => since.seq + 1 + i), "every missed seq, once, in order");
  assert.deepEqual(events.map((e) => [e.name, e.keys.join()]), [
    ["data.update", "1"],
    ["data.pre-delete", "2"],
    ["data.delete", "2"],
    ["data.create", "4"],
  ]);
  report(t, `restart: the screen resumed from seq ${since.seq} with a replay of ${expected} events`);
});
