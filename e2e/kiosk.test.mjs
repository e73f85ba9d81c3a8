// The kiosk wire contract through the real socket.io-client, over WebSocket and over HTTP
// long-polling: captured Directus bodies in, data.* events out; resume with replay; refused
// webhooks; and the time from a webhook to the kiosk's event.
//
// The tests run one after the other against the one relay that run.sh started. Each uses
// item keys of its own, so they do not depend on one another's leftovers.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  accept,
  assertIsoTime,
  fixtureBodies,
  Kiosk,
  percentiles,
  post,
  postLarge,
  RELAY_URL,
  report,
  RUN_ID,
} from "./helpers.mjs";

const TRANSPORTS = ["websocket", "polling"];
const TEST_TIMEOUT = 60_000;

/** The fields each event carries, besides what it is about. */
const FIELDS = {
  "data.create": ["collection", "keys", "payload", "record", "seq", "ts"],
  "data.update": ["collection", "keys", "payload", "records", "seq", "ts"],
  "data.pre-delete": ["collection", "keys", "records", "seq", "ts"],
  "data.delete": ["collection", "keys", "records", "seq", "ts"],
};

/** A field as the relay reads it: absent, null and a Flow's "undefined" all mean absent. */
const present = (v) => (v === undefined || v === null || v === "undefined" ? undefined : v);

/**
 * The events the relay should emit for `bodies`, worked out independently from the contract:
 * records are the item's last record with the payload's fields written over it (starting from
 * {id: key}); a change that leaves the record as it was emits nothing; a delete emits
 * data.pre-delete then data.delete with the last records. Starts from items unknown to the relay.
 */
function expectedEvents(bodies) {
  const mirror = new Map();
  const out = [];
  const same = (a, b) => {
    try {
      assert.deepStrictEqual(a, b);
      return true;
    } catch {
      return false;
    }
  };
  for (const text of bodies) {
    const b = JSON.parse(text);
    const action = b.event.split(".").pop();
    const collection = present(b.collection) ?? b.event.split(".items.")[0];
    const raw = Array.isArray(present(b.keys)) ? b.keys : [b.key];
    const keys = raw.map((k) => ({ text: String(k), json: k }));
    const id = (k) => `${collection}\u0000${k.text}`;
    if (action === "create" || action === "update") {
      const payload = present(b.payload);
      const changed = [];
      for (const k of keys) {
        const before = mirror.get(id(k));
        const record = { ...(before ?? { id: k.json }), ...(payload ?? {}) };
        if (!same(before, record)) {
          mirror.set(id(k), record);
          changed.push({ key: k.text, record });
        }
      }
      if (changed.length === 0) continue;
      if (action === "create") {
        for (const c of changed) {
          out.push({ name: "data.create", from: text, body: { collection, keys: [c.key], payload, record: c.record } });
        }
      } else {
        out.push({
          name: "data.update",
          from: text,
          body: { collection, keys: changed.map((c) => c.key), payload, records: changed.map((c) => c.record) },
        });
      }
    } else {
      const gone = keys.map((k) => ({ key: k.text, record: mirror.get(id(k)) ?? null }));
      keys.forEach((k) => mirror.delete(id(k)));
      const body = { collection, keys: gone.map((g) => g.key), records: gone.map((g) => g.record) };
      out.push({ name: "data.pre-delete", from: text, body });
      out.push({ name: "data.delete", from: text, body });
    }
  }
  return out;
}

/** Checks one received event against the expected one and the seq that must come next. */
function checkEvent(kiosk, got, want, seq) {
  const where = `${kiosk.label}, for ${want.from}: got ${got.name} ${JSON.stringify(got.body)}`;
  assert.equal(got.name, want.name, where);
  assert.deepEqual(Object.keys(got.body).sort(), [...FIELDS[want.name]].sort(), `fields, ${where}`);
  assert.ok(
    got.body.keys.every((k) => typeof k === "string"),
    `keys are strings, ${where}`,
  );
  assert.equal(got.body.seq, seq, `seq increases by exactly one, ${where}`);
  assertIsoTime(got.body.ts, `ts, ${where}`);
  const { seq: _s, ts: _t, ...rest } = got.body;
  assert.deepStrictEqual(rest, want.body, where);
}

/** Opens one kiosk per transport, checks relay.status, and returns them with the status. */
async function openKiosks(labelSuffix = "") {
  const kiosks = TRANSPORTS.map((t) => new Kiosk(t, `${t} kiosk${labelSuffix}`));
  const statuses = await Promise.all(kiosks.map((k) => k.open()));
  for (const [i, k] of kiosks.entries()) {
    assert.equal(k.transportName, k.transport, `${k.label} really uses ${k.transport}`);
    const s = statuses[i];
    assert.deepEqual(Object.keys(s).sort(), ["epoch", "seq", "since", "upstream"], JSON.stringify(s));
    assert.equal(s.upstream, "live");
    assert.match(s.epoch, /^[0-9a-f]{16}$/);
    assert.ok(Number.isInteger(s.seq) && s.seq >= 0, `seq ${s.seq}`);
    assertIsoTime(s.since, "relay.status since");
  }
  return { kiosks, statuses };
}

test("every captured Directus body reaches never-subscribed kiosks as the right events", { timeout: TEST_TIMEOUT }, async (t) => {
  const bodies = fixtureBodies();
  assert.equal(bodies.length, 24, "the fixture holds 24 captured bodies");
  const { kiosks, statuses } = await openKiosks();
  try {
    assert.equal(statuses[0].epoch, statuses[1].epoch, "one relay, one epoch");
    assert.equal(statuses[0].seq, statuses[1].seq, "nothing happened between the two connects");
    for (const body of bodies) await accept(body);
    const expected = expectedEvents(bodies);
    t.diagnostic(`${bodies.length} bodies → ${expected.length} events`);
    for (const [i, kiosk] of kiosks.entries()) {
      let seq = statuses[i].seq;
      for (const want of expected) checkEvent(kiosk, await kiosk.next(), want, ++seq);
    }
    await Promise.all(kiosks.map((k) => k.none(undefined, "after the last fixture event")));
  } finally {
    kiosks.forEach((k) => k.close());
  }
});

for (const transport of TRANSPORTS) {
  test(`a kiosk on ${transport} resumes with exactly the events it missed, then live events`, { timeout: TEST_TIMEOUT }, async () => {
    const tag = `${RUN_ID}-${transport}`;
    const s1 = `resume-${tag}-s1`;
    const s2 = `resume-${tag}-s2`;
    const a1 = `resume-${tag}-a1`;
    const a2 = `resume-${tag}-a2`;
    const screens = (action, key, payload) =>
      action === "create"
        ? { event: "screens.items.create", payload, key, collection: "screens" }
        : action === "update"
          ? { event: "screens.items.update", payload, keys: [key], collection: "screens" }
          : { event: "screens.items.delete", payload: [key], keys: [key], collection: "screens" };
    const announcements = (action, key, payload) =>
      action === "create"
        ? { event: "announcements.items.create", payload, key, collection: "announcements" }
        : action === "update"
          ? { event: "announcements.items.update", payload, keys: [key], collection: "announcements" }
          : { event: "announcements.items.delete", payload: [key], keys: [key], collection: "announcements" };

    // A never-subscribed observer sees every event: the reference for seqs and bodies.
    const observer = new Kiosk("websocket", "observer");
    const kiosk = new Kiosk(transport, `${transport} kiosk`);
    try {
      const observed = await observer.open();
      const status = await kiosk.open();
      assert.equal(kiosk.transportName, transport);
      assert.equal(status.epoch, observed.epoch);

      // Subscribe without `since`: a snapshot of screens.
      const first = await kiosk.subscribe({ collections: ["screens"] });
      assert.equal(first.ack.ok, true, JSON.stringify(first.ack));
      assert.equal(first.ack.epoch, status.epoch);
      assert.equal(first.ack.seq, status.seq, "the ack tells the current seq");
      assert.deepEqual(Object.keys(first.ack.collections), ["screens"]);
      assert.equal(first.ack.collections.screens.mode, "snapshot");
      assert.ok(Array.isArray(first.ack.collections.screens.items));
      const since = { epoch: first.ack.epoch, seq: first.ack.seq };

      // Live while subscribed: only screens arrive.
      await accept(screens("create", s1, { name: "S1" }));
      await accept(announcements("create", a1, { title: "A1" }));
      await accept(screens("update", s1, { name: "S1 b" }));
      const live1 = await observer.take(3);
      const mine1 = live1.filter((e) => e.body.collection === "screens");
      const got1 = await kiosk.take(2);
      assert.deepEqual(
        got1.map((e) => [e.name, e.body.seq, e.body.keys]),
        mine1.map((e) => [e.name, e.body.seq, e.body.keys]),
        "a subscribed kiosk gets its collections only",
      );
      since.seq = got1.at(-1).body.seq;

      // Away: some changes in screens, some in announcements.
      kiosk.disconnect();
      const missed = [
        screens("create", s2, { name: "S2" }),
        announcements("update", a1, { title: "A1 b" }),
        screens("update", s1, { name: "S1 c", sort: 1 }),
        announcements("create", a2, { title: "A2" }),
        screens("delete", s2),
        screens("update", s1, { status: "published" }),
      ];
      for (const body of missed) await accept(body);
      const away = await observer.take(7); // 1 + 1 + 1 + 1 + 2 (pre-delete, delete) + 1
      const mineAway = away.filter((e) => e.body.collection === "screens");
      assert.equal(mineAway.length, 5);
      await kiosk.none(100, "while disconnected");

      // Back: a replay of exactly the missed screens events, after the ack, in order.
      const again = await kiosk.open();
      assert.equal(again.epoch, since.epoch, "same relay run, same epoch");
      assert.equal(again.seq, away.at(-1).body.seq, "relay.status tells the current seq");
      const before = kiosk.received;
      const resumed = await kiosk.subscribe({ collections: ["screens"], since });
      assert.equal(resumed.before, before, "the ack comes before any replayed event");
      assert.deepEqual(resumed.ack, {
        ok: true,
        epoch: since.epoch,
        seq: away.at(-1).body.seq,
        collections: { screens: { mode: "replay", events: 5 } },
      });
      const replayed = await kiosk.take(5);
      assert.deepEqual(
        replayed.map((e) => ({ name: e.name, body: e.body })),
        mineAway.map((e) => ({ name: e.name, body: e.body })),
        "the replay is exactly the missed events of the subscribed collection, as first sent",
      );

      // Then live again, screens only, and nothing else.
      await accept(announcements("update", a2, { title: "A2 b" }));
      await accept(screens("update", s1, { name: "S1 d" }));
      const live2 = await observer.take(2);
      const got2 = await kiosk.next();
      assert.deepEqual({ name: got2.name, body: got2.body }, { name: live2[1].name, body: live2[1].body });
      assert.equal(got2.body.seq, away.at(-1).body.seq + 2, "the live stream goes on without a gap");
      await kiosk.none(undefined, "after the replay and the live event");

      // Tidy up the items this test made.
      for (const body of [screens("delete", s1), announcements("delete", a1), announcements("delete", a2)]) {
        await accept(body);
      }
      await observer.take(6);
      const tidy = await kiosk.take(2);
      assert.deepEqual(
        tidy.map((e) => e.name),
        ["data.pre-delete", "data.delete"],
      );
      await kiosk.none(undefined, "after tidying up");
    } finally {
      kiosk.close();
      observer.close();
    }
  });
}

test("refused webhooks (401, 400, 413) emit nothing and the relay goes on delivering", { timeout: TEST_TIMEOUT }, async () => {
  const { kiosks, statuses } = await openKiosks();
  const key = `refused-${RUN_ID}`;
  const good = { event: "screens.items.create", payload: { name: "after refusals" }, key, collection: "screens" };
  try {
    const cases = [
      ["wrong secret", () => post(good, { secret: "not-the-right-secret-at-all" }), 401],
      ["no secret", () => post(good, { secret: null }), 401],
      ["empty secret", () => post(good, { secret: "" }), 401],
      ["garbage", () => post("this is {not json"), 400],
      ["empty body", () => post(""), 400],
      ["a JSON array", () => post("[1,2,3]"), 400],
      ["an unknown event", () => post({ ...good, event: "screens.items.explode" }), 400],
      ["no key", () => post({ event: "screens.items.create", payload: { name: "x" }, collection: "screens" }), 400],
      ["a float key", () => post({ ...good, key: 1.5 }), 400],
      ["a collection that is not relayed", () => post({ ...good, event: "secrets.items.create", collection: "secrets" }), 400],
      ["event and collection disagree", () => post({ ...good, collection: "announcements" }), 400],
    ];
    for (const [what, send, status] of cases) {
      const res = await send();
      assert.equal(res.status, status, `${what}: ${res.status} ${res.body}`);
      if (status === 400) {
        assert.equal(res.json?.ok, false, `${what}: a JSON error body: ${res.body}`);
        assert.equal(typeof res.json.error, "string", `${what}: ${res.body}`);
        assert.ok(res.json.error.length > 0);
      }
    }
    const limit = 1024 * 1024;
    for (const how of [{ expectContinue: true }, { chunked: true }, { chunked: true, expectContinue: true }]) {
      const res = await postLarge(limit + 1, how);
      assert.equal(res.status, 413, `1 MiB + 1 byte, ${JSON.stringify(how)}: ${res.status} ${res.body} ${res.error ?? ""}`);
    }
    // Just under the limit is accepted.
    const big = await postLarge(limit - 1024, { chunked: true });
    assert.equal(big.status, 202, `a body just under 1 MiB: ${big.status} ${big.body}`);

    const health = await fetch(`${RELAY_URL}/healthz`);
    assert.equal(health.status, 200, "still healthy");
    await accept(good);
    for (const [i, kiosk] of kiosks.entries()) {
      const bigEvent = await kiosk.next();
      assert.equal(bigEvent.name, "data.create");
      assert.deepEqual(bigEvent.body.keys, ["too-large"]);
      assert.equal(bigEvent.body.seq, statuses[i].seq + 1, `${kiosk.label}: refused webhooks emitted nothing`);
      const event = await kiosk.next();
      assert.equal(event.name, "data.create", `${kiosk.label}: ${JSON.stringify(event)}`);
      assert.deepEqual(event.body.keys, [key]);
      assert.deepEqual(event.body.record, { id: key, name: "after refusals" });
      assert.equal(event.body.seq, statuses[i].seq + 2);
    }
    for (const body of [
      { event: "screens.items.delete", payload: [key], keys: [key], collection: "screens" },
      { event: "screens.items.delete", payload: ["too-large"], keys: ["too-large"], collection: "screens" },
    ]) {
      await accept(body);
    }
    for (const kiosk of kiosks) {
      assert.deepEqual(
        (await kiosk.take(4)).map((e) => e.name),
        ["data.pre-delete", "data.delete", "data.pre-delete", "data.delete"],
      );
      await kiosk.none(undefined, "after the deletes");
    }
  } finally {
    kiosks.forEach((k) => k.close());
  }
});

// A client that sends its body at once (node's http, axios in a Directus Flow) must read the
// 413, not a reset connection: the relay drains what it refuses.
test(
  "an oversized body sent at once, as a Directus Flow sends it, is answered 413 (not a reset connection)",
  { timeout: TEST_TIMEOUT },
  async (t) => {
    const outcomes = [];
    for (const how of [{ chunked: false }, { chunked: true }]) {
      for (const size of [1024 * 1024 + 1, 4 * 1024 * 1024]) {
        for (let i = 0; i < 3; i++) {
          const res = await postLarge(size, how);
          outcomes.push(`${how.chunked ? "chunked" : "content-length"} ${size}: ${res.status || res.error}`);
        }
      }
    }
    t.diagnostic(outcomes.join("; "));
    assert.deepEqual(
      outcomes.filter((o) => !o.endsWith(": 413")),
      [],
      "every oversized body is answered 413",
    );
  },
);

test("a duplicate change (same resulting record) is dropped", { timeout: TEST_TIMEOUT }, async () => {
  const { kiosks, statuses } = await openKiosks();
  const key = `dup-${RUN_ID}`;
  try {
    const update = { event: "screens.items.update", payload: { status: "published" }, keys: [key], collection: "screens" };
    await accept({ event: "screens.items.create", payload: { name: "dup" }, key, collection: "screens" });
    await accept(update);
    await accept(update); // same record again: dropped
    await accept({ ...update, keys: [key, key] }); // still the same record
    await accept({ event: "screens.items.delete", payload: [key], keys: [key], collection: "screens" });
    await accept({ event: "screens.items.delete", payload: [key], keys: [key], collection: "screens" }); // gone already
    for (const [i, kiosk] of kiosks.entries()) {
      const got = await kiosk.take(4);
      assert.deepEqual(
        got.map((e) => [e.name, e.body.seq]),
        [
          ["data.create", statuses[i].seq + 1],
          ["data.update", statuses[i].seq + 2],
          ["data.pre-delete", statuses[i].seq + 3],
          ["data.delete", statuses[i].seq + 4],
        ],
      );
      await kiosk.none(undefined, "the duplicates were dropped");
    }
  } finally {
    kiosks.forEach((k) => k.close());
  }
});

test("latency from webhook POST to kiosk event (reported, not asserted)", { timeout: 120_000 }, async (t) => {
  const ROUNDS = 100;
  const { kiosks } = await openKiosks();
  const key = `latency-${RUN_ID}`;
  const lat = Object.fromEntries(TRANSPORTS.map((tr) => [tr, []]));
  const answer = [];
  try {
    await accept({ event: "screens.items.create", payload: { name: "latency", n: -1 }, key, collection: "screens" });
    await Promise.all(kiosks.map((k) => k.next()));
    for (let n = 0; n < ROUNDS; n++) {
      const t0 = performance.now();
      await accept({ event: "screens.items.update", payload: { n }, keys: [key], collection: "screens" });
      answer.push(performance.now() - t0);
      const events = await Promise.all(kiosks.map((k) => k.next()));
      for (const [i, e] of events.entries()) {
        assert.equal(e.name, "data.update");
        assert.equal(e.body.records[0].n, n, "the event of this webhook");
        lat[kiosks[i].transport].push(e.at - t0);
      }
    }
    await accept({ event: "screens.items.delete", payload: [key], keys: [key], collection: "screens" });
    await Promise.all(kiosks.map((k) => k.take(2)));
  } finally {
    kiosks.forEach((k) => k.close());
  }
  const fmt = (p) => `median ${p.median.toFixed(2)} ms, p99 ${p.p99.toFixed(2)} ms, max ${p.max.toFixed(2)} ms (n=${p.n})`;
  report(t, `latency POST → 202 answer:              ${fmt(percentiles(answer))}`);
  for (const tr of TRANSPORTS) {
    report(t, `latency POST → kiosk event, ${tr.padEnd(9)}:  ${fmt(percentiles(lat[tr]))}`);
  }
});
