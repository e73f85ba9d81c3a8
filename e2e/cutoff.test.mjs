// A kiosk that stops reading is cut off by the relay (its queue of limits.kiosk_queue packets
// is full), and socket.io-client, unchanged, reconnects by itself: the relay closes the
// connection rather than sending a Socket.IO disconnect, which socket.io-client treats as final.
// The kiosk then resumes from its last {epoch, seq}, as examples/kiosk.html does, and ends
// with every change exactly once: a replay of what it missed, or a snapshot.
//
// "Stops reading": the Node socket under the kiosk's WebSocket is paused, so the TCP window
// closes and the relay's writes back up, as with a frozen screen on a bad link.

import assert from "node:assert/strict";
import { test } from "node:test";
import { io } from "socket.io-client";
import { accept, Kiosk, RELAY_URL, RUN_ID, SOON_MS, sleep } from "./helpers.mjs";

const TEST_TIMEOUT = 120_000;
/** Changes posted at most while waiting for the relay to cut the kiosk off. */
const MAX_CHANGES = 4000;
/** Padding per change, so the relay's queue fills after a few hundred events. */
const FILLER = "x".repeat(8 * 1024);

async function overflows() {
  const text = await (await fetch(`${RELAY_URL}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("relay_kiosk_overflows_total "));
  assert.ok(line, "relay_kiosk_overflows_total is in /metrics");
  return Number(line.split(" ")[1]);
}

async function until(what, check, ms = SOON_MS) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(20);
  }
}

/**
 * A kiosk with the logic of examples/kiosk.html: subscribes to screens on every connect with
 * the last {epoch, seq} it saw, applies snapshots and events, and keeps everything it got.
 */
class ResumingKiosk {
  constructor(transports) {
    this.items = new Map();
    this.since = undefined;
    this.seqs = []; // seq of every screens event applied, in order
    this.acks = [];
    this.connects = 0;
    this.disconnects = [];
    this.socket = io(RELAY_URL, {
      transports,
      forceNew: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      timeout: SOON_MS,
      auth: { collections: ["screens"] },
    });
    const mine = (e) => {
      if (e.collection !== "screens") return false;
      this.seqs.push(e.seq);
      if (this.since) this.since.seq = e.seq;
      return true;
    };
    this.socket.on("disconnect", (reason) => {
      this.disconnects.push(reason);
      if (reason === "io server disconnect") this.socket.connect();
    });
    this.socket.on("connect", () => {
      this.connects += 1;
      this.socket.emit("subscribe", { collections: ["screens"], since: this.since }, (ack) => {
        assert.equal(ack.ok, true, JSON.stringify(ack));
        this.acks.push(ack);
        this.since = { epoch: ack.epoch, seq: ack.seq };
        const c = ack.collections.screens;
        if (c.mode === "snapshot") {
          this.items.clear();
          c.items.forEach((r) => this.items.set(String(r.id), r));
        }
      });
    });
    this.socket.on("data.create", (e) => mine(e) && this.items.set(e.keys[0], e.record));
    this.socket.on("data.update", (e) => mine(e) && e.keys.forEach((k, i) => this.items.set(k, e.records[i])));
    this.socket.on("data.delete", (e) => mine(e) && e.keys.forEach((k) => this.items.delete(k)));
  }

  get transport() {
    return this.socket.io.engine?.transport;
  }

  close() {
    this.socket.disconnect();
  }
}

for (const [label, transports] of [
  ["websocket", ["websocket"]],
  ["polling upgraded to websocket", ["polling", "websocket"]],
]) {
  test(`a kiosk on ${label} that stops reading is cut off, reconnects by itself and resumes without gap or duplicate`, { timeout: TEST_TIMEOUT }, async (t) => {
    const key = `cutoff-${RUN_ID}-${transports.length}`;
    const update = (n) => ({
      event: "screens.items.update",
      payload: { n, filler: FILLER },
      keys: [key],
      collection: "screens",
    });
    const observer = new Kiosk("websocket", "observer");
    const kiosk = new ResumingKiosk(transports);
    try {
      await observer.open();
      await until("the kiosk's first subscribe is answered", () => kiosk.acks.length === 1);
      await until("the kiosk is on WebSocket", () => kiosk.transport?.name === "websocket");
      await accept({ event: "screens.items.create", payload: { name: "cut off" }, key, collection: "screens" });
      await until("the kiosk has the item", () => kiosk.items.has(key));
      const before = await overflows();

      // The kiosk stops reading.
      kiosk.transport.ws._socket.pause();
      let n = 0;
      while ((await overflows()) === before) {
        assert.ok(n < MAX_CHANGES, `${n} changes did not fill the kiosk's queue`);
        for (let i = 0; i < 20; i++) await accept(update(++n));
      }
      // Changes while it is away.
      for (let i = 0; i < 5; i++) await accept(update(++n));
      t.diagnostic(`cut off after ${n - 5} changes`);
      assert.equal(kiosk.connects, 1, "still the first connection while paused");

      // It reads again: it finds its connection closed and reconnects by itself.
      kiosk.transport.ws._socket.resume();
      await until("the kiosk reconnected and resubscribed", () => kiosk.acks.length === 2, 10_000);
      for (let i = 0; i < 3; i++) await accept(update(++n));
      await until(`the kiosk shows change ${n}`, () => kiosk.items.get(key)?.n === n);

      assert.equal(await overflows(), before + 1, "one kiosk was cut off, once (not the observer)");
      assert.equal(kiosk.connects, 2);
      assert.equal(kiosk.disconnects.length, 1, JSON.stringify(kiosk.disconnects));
      assert.match(kiosk.disconnects[0], /^transport (close|error)$/, "a closed transport, not a final server disconnect");
      assert.deepEqual(kiosk.items.get(key), { id: key, name: "cut off", n, filler: FILLER });

      // Exactly once: seqs only go up, and after a replay nothing is missing.
      for (let i = 1; i < kiosk.seqs.length; i++) {
        assert.ok(kiosk.seqs[i] > kiosk.seqs[i - 1], `seq ${kiosk.seqs[i]} after ${kiosk.seqs[i - 1]}: a duplicate or out of order`);
      }
      const observed = (await observer.take(n + 1, 30_000)).filter((e) => e.body.collection === "screens").map((e) => e.body.seq);
      const resumed = kiosk.acks[1];
      t.diagnostic(`resumed with ${JSON.stringify(resumed.collections.screens.mode)}, ${kiosk.seqs.length} events applied`);
      if (resumed.collections.screens.mode === "replay") {
        assert.deepEqual(kiosk.seqs, observed, "with a replay the kiosk applied every event, once");
      } else {
        assert.equal(resumed.collections.screens.mode, "snapshot");
        const after = observed.filter((s) => s > resumed.seq);
        assert.deepEqual(kiosk.seqs.filter((s) => s > resumed.seq), after, "every event after the snapshot, once");
      }

      await accept({ event: "screens.items.delete", payload: [key], keys: [key], collection: "screens" });
      await until("the kiosk saw the delete", () => !kiosk.items.has(key));
      await observer.take(2);
    } finally {
      kiosk.close();
      observer.close();
    }
  });
}
