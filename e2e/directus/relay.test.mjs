// End-to-end tests of directus-relay against a REAL Directus 12.4.0, run by e2e/directus/run.sh
// (which installs and starts Directus and passes where it is in the environment).
//
// For each upstream mode — websocket, poll, webhook (last: it leaves a Flow behind) — the test
// starts a relay (child process, fixed port per mode), connects one kiosk (the real
// socket.io-client over WebSocket, auto-reconnect on, re-subscribing with its last
// {epoch, seq} on every connect) that keeps a view of the three collections, and then:
//   1. writes through the Directus REST API with every batch form; after each write the kiosk
//      must get the right event for every affected key; after a quiet period, exactly once;
//      the view must equal Directus's items;
//   2. stops Directus (the kiosk gets relay.status offline), starts it again on the same port
//      with its data (live again), and writes made afterwards arrive exactly once;
//   3. stops the relay with SIGTERM (exit 0), changes items while it is down, starts it again on
//      the same port: the kiosk reconnects by itself and re-subscribes with its since. With its
//      state file (README, "The state file") the relay keeps its epoch: the kiosk resumes and
//      gets each change made meanwhile exactly once. Then once more without the state file: a
//      new epoch, and a snapshot. Either way its view then equals Directus's items;
//   4. measures 100 single-item PATCHes: request sent → kiosk has the data.update with the new
//      value (median and p99 reported, not asserted).
//
// Every failure message says what the kiosk received and ends with the relay's log tail.

import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { appendFileSync, closeSync, existsSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { isDeepStrictEqual } from "node:util";
import { io } from "socket.io-client";
import { directusEnv, freePort, required } from "./lib.mjs";

const DIRECTUS_DIR = required("E2E_DIRECTUS_DIR");
const DIRECTUS_PORT = required("E2E_DIRECTUS_PORT");
const WORK = required("E2E_WORK");
const RELAY_BIN = required("E2E_RELAY_BIN");
const SCRIPTS = required("E2E_DIRECTUS_SCRIPTS");
const REPORT_FILE = process.env.E2E_REPORT;
const MODES = (process.env.E2E_MODES ?? "websocket poll webhook").split(/[\s,]+/).filter(Boolean);

const COLLECTIONS = ["screens", "announcements", "channels"];
const KEY_FIELD = { screens: "id", announcements: "id", channels: "slug" };
const RELAY_RECONCILE = "2s";
/** How long one write may take to reach the kiosk (poll: 200 ms; a missed one is repaired by
 * the reconcile every 2 s, which is within this). */
const EVENT_TIMEOUT_MS = 10_000;
/** Quiet period before counting: longer than the reconcile interval, so a duplicate that a
 * reconcile would produce has time to show up. */
const QUIET_MS = 2_500;
/** Directus outage: the relay retries with a backoff of up to 16 s by the time Directus is back. */
const LIVE_AGAIN_TIMEOUT_MS = 90_000;
const LATENCY_WRITES = 100;
const RUN = Date.now().toString(36);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const ms = (x) => `${x.toFixed(1)} ms`;

/** A line for run.sh's summary (printed at once when run without run.sh). */
function report(line) {
  if (REPORT_FILE) appendFileSync(REPORT_FILE, `${line}\n`);
  else console.log(line);
}

// --- helpers: processes ---------------------------------------------------------------------

function run(cmd, args, { timeout = 180_000 } = {}) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    execFile(cmd, args, { timeout, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      const took = performance.now() - started;
      if (error) {
        reject(new Error(`${cmd} ${args.join(" ")} failed (${error.code ?? error.signal}) after ${ms(took)}:\n${stderr}\n${stdout}`));
      } else {
        resolve({ stdout, stderr, took });
      }
    });
  });
}

/** The last lines of a file, each cut to 400 characters (the relay logs whole request URLs). */
function tail(file, lines = 40) {
  if (!existsSync(file)) return `(no ${file})`;
  return readFileSync(file, "utf8")
    .split("\n")
    .slice(-lines - 1)
    .map((l) => (l.length > 400 ? `${l.slice(0, 400)}…` : l))
    .join("\n");
}

// --- Directus ---------------------------------------------------------------------------------

const directus = {
  get url() {
    return `http://127.0.0.1:${DIRECTUS_PORT}`;
  },
  token: null,
  async api(method, path, body) {
    this.token ??= directusEnv().DIRECTUS_ADMIN_TOKEN;
    const res = await fetch(this.url + path, {
      method,
      headers: { authorization: `Bearer ${this.token}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`Directus ${method} ${path} -> HTTP ${res.status}: ${text.slice(0, 500)}`);
    return text ? JSON.parse(text) : null;
  },
  async items(collection) {
    return (await this.api("GET", `/items/${collection}?limit=-1`)).data;
  },
  async stop() {
    return run("bash", [join(SCRIPTS, "stop.sh"), DIRECTUS_DIR]);
  },
  async start() {
    return run("bash", [join(SCRIPTS, "start.sh"), DIRECTUS_DIR, DIRECTUS_PORT]);
  },
  running() {
    return existsSync(join(DIRECTUS_DIR, "directus.pid"));
  },
};

// --- the relay --------------------------------------------------------------------------------

const relays = new Set();
function killRelays() {
  for (const r of relays) {
    try {
      r.proc?.kill("SIGKILL");
    } catch {}
  }
}
process.on("exit", killRelays);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    killRelays();
    process.exit(128 + (signal === "SIGTERM" ? 15 : 2));
  });
}

class Relay {
  constructor(mode, port) {
    this.mode = mode;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.secret = `e2e-secret-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
    this.logFile = join(WORK, `relay-${mode}.log`);
    this.pidFile = join(WORK, `relay-${mode}.pid`);
    this.configFile = join(WORK, `relay-${mode}.toml`);
    this.proc = null;
    this.starts = 0;
  }

  config() {
    const { DIRECTUS_RELAY_TOKEN } = directusEnv();
    return `listen = "127.0.0.1:${this.port}"
state_dir = "${join(WORK, `state-${this.mode}`)}"
shutdown_grace = "2s"
clients.allow_anonymous = true

[webhook]
path = "/hooks/directus"
secret = "${this.secret}"

[directus]
url = "${directus.url}"
token = "${DIRECTUS_RELAY_TOKEN}"
mode = "${this.mode}"
poll_interval = "200ms"
reconcile_interval = "${RELAY_RECONCILE}"

[[collections]]
name = "screens"

[[collections]]
name = "announcements"

[[collections]]
name = "channels"
key_field = "slug"
`;
  }

  async start() {
    if (this.proc) throw new Error("relay already running");
    writeFileSync(this.configFile, this.config());
    this.starts += 1;
    const marker = `----- e2e: start #${this.starts} of the ${this.mode} relay at ${new Date().toISOString()}\n`;
    appendFileSync(this.logFile, marker);
    const offset = statSync(this.logFile).size;
    const fd = openSync(this.logFile, "a");
    // The relay reads RELAY_* variables as configuration: pass none of ours.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("RELAY_")));
    env.RUST_LOG = process.env.E2E_RUST_LOG ?? "info,directus_relay=debug";
    const proc = spawn(RELAY_BIN, ["--config", this.configFile], { stdio: ["ignore", fd, fd], env });
    closeSync(fd);
    this.proc = proc;
    relays.add(this);
    writeFileSync(this.pidFile, String(proc.pid));
    this.exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
    let exit = null;
    this.exited.then((e) => (exit = e));
    const want = `relay listening addr=127.0.0.1:${this.port}`;
    const deadline = Date.now() + 20_000;
    for (;;) {
      const text = readFileSync(this.logFile, "utf8").slice(offset);
      if (text.includes(want)) return;
      if (exit) throw new Error(`the ${this.mode} relay exited (${JSON.stringify(exit)}) before listening:\n${this.tail()}`);
      if (Date.now() > deadline) throw new Error(`the ${this.mode} relay did not log "${want}" within 20 s:\n${this.tail()}`);
      await sleep(50);
    }
  }

  /** SIGTERM; resolves to {code, signal}. */
  async stop() {
    if (!this.proc) return null;
    const proc = this.proc;
    proc.kill("SIGTERM");
    const result = await Promise.race([this.exited, sleep(15_000).then(() => null)]);
    if (!result) {
      proc.kill("SIGKILL");
      await this.exited;
    }
    this.proc = null;
    relays.delete(this);
    rmSync(this.pidFile, { force: true });
    return result ?? { code: null, signal: "SIGKILL (did not exit within 15 s of SIGTERM)" };
  }

  /** The log of the current (or last) start. */
  log() {
    const text = readFileSync(this.logFile, "utf8");
    return text.slice(text.lastIndexOf("----- e2e: start #"));
  }

  tail(lines = 40) {
    return `---- ${this.mode} relay log (last ${lines} lines of ${this.logFile}) ----\n${tail(this.logFile, lines)}`;
  }
}

// --- the kiosk --------------------------------------------------------------------------------

const DATA_EVENTS = ["data.create", "data.update", "data.pre-delete", "data.delete"];

/** Event kind of a data.* name: create, update, pre-delete, delete. */
const kindOf = (name) => name.slice("data.".length);

class Kiosk {
  constructor(url, label) {
    this.label = label;
    this.log = []; // {i, t, name, body}
    this.views = new Map(COLLECTIONS.map((c) => [c, new Map()]));
    this.since = undefined;
    this.epoch = undefined;
    this.nextSeq = undefined;
    this.status = undefined;
    this.lastAck = undefined;
    this.acks = 0;
    this.anomalies = []; // {i, text}
    this.waiters = new Set();
    this.socket = io(url, {
      transports: ["websocket"],
      forceNew: true,
      reconnection: true,
      reconnectionDelay: 200,
      reconnectionDelayMax: 1000,
      timeout: 5000,
      auth: { collections: COLLECTIONS },
    });
    this.socket.on("connect", () => {
      this.record("connect", { transport: this.socket.io.engine?.transport?.name });
      this.subscribe();
    });
    this.socket.on("disconnect", (reason) => {
      this.record("disconnect", { reason });
      // The relay cuts off a kiosk that lags (and may close sessions on shutdown) with a
      // server disconnect, after which socket.io-client does not reconnect on its own.
      if (reason === "io server disconnect") this.socket.connect();
    });
    this.socket.on("connect_error", (e) => this.record("connect_error", { message: e.message }));
    this.socket.on("relay.status", (s) => {
      this.status = s;
      this.record("relay.status", s);
    });
    for (const name of DATA_EVENTS) this.socket.on(name, (body) => this.onData(name, body));
    this.socket.onAny((name, body) => {
      if (name !== "relay.status" && !DATA_EVENTS.includes(name)) {
        this.anomaly(`unexpected event ${name}`);
        this.record(name, body);
      }
    });
  }

  anomaly(text) {
    this.anomalies.push({ i: this.log.length, text });
  }

  subscribe() {
    const since = this.since ? { ...this.since } : undefined;
    const request = { collections: COLLECTIONS };
    if (since) request.since = since;
    this.record("subscribe", request);
    this.socket.timeout(10_000).emit("subscribe", request, (err, ack) => {
      if (err) {
        this.anomaly(`no subscribe ack within 10 s (${err.message})`);
        this.record("ack-timeout", {});
        return;
      }
      if (!ack?.ok) {
        this.anomaly(`subscribe refused: ${JSON.stringify(ack)}`);
        this.record("ack", ack);
        return;
      }
      let replay = 0;
      let snapshot = 0;
      const modes = {};
      for (const c of COLLECTIONS) {
        const part = ack.collections?.[c];
        modes[c] = part?.mode;
        if (part?.mode === "snapshot") {
          snapshot += 1;
          this.views.set(c, new Map(part.items.map((r) => [String(r[KEY_FIELD[c]]), r])));
        } else if (part?.mode === "replay") {
          replay += 1;
          modes[c] += `(${part.events})`;
        } else {
          this.anomaly(`ack for ${c} is neither snapshot nor replay: ${JSON.stringify(part)}`);
        }
      }
      if (replay > 0 && since?.epoch !== ack.epoch) this.anomaly(`replay from another epoch: sent ${JSON.stringify(since)}, ack epoch ${ack.epoch}`);
      this.epoch = ack.epoch;
      if (replay > 0 && snapshot > 0) {
        this.nextSeq = undefined; // mixed: no gap check until the next event
      } else if (replay > 0) {
        this.nextSeq = since.seq + 1;
      } else {
        this.since = { epoch: ack.epoch, seq: ack.seq };
        this.nextSeq = ack.seq + 1;
      }
      this.acks += 1;
      this.lastAck = { epoch: ack.epoch, seq: ack.seq, modes, sentSince: since, i: this.log.length };
      this.record("ack", { epoch: ack.epoch, seq: ack.seq, modes });
    });
  }

  onData(name, body) {
    if (this.nextSeq !== undefined && body?.seq !== this.nextSeq) {
      this.anomaly(`${name} ${body?.collection} ${JSON.stringify(body?.keys)} has seq ${body?.seq}, expected ${this.nextSeq} (gap or repeat)`);
    }
    if (typeof body?.seq === "number") this.nextSeq = body.seq + 1;
    if (this.epoch) this.since = { epoch: this.epoch, seq: body.seq };
    const view = this.views.get(body?.collection);
    if (!view) this.anomaly(`${name} for an unknown collection ${body?.collection}`);
    const keys = Array.isArray(body?.keys) ? body.keys : [];
    if (!keys.every((k) => typeof k === "string")) this.anomaly(`${name} with keys that are not all strings: ${JSON.stringify(body.keys)}`);
    if (view) {
      // Seen from the kiosk, an event that changes nothing in its view is a duplicate.
      for (const [i, k] of keys.entries()) {
        const has = view.has(String(k));
        const record = name === "data.create" ? body.record : body.records?.[i];
        if ((name === "data.create" || name === "data.update") && has && isDeepStrictEqual(view.get(String(k)), record)) {
          this.anomaly(`${name} seq=${body.seq} ${body.collection}/${k} changes nothing: the kiosk already has this record`);
        } else if ((name === "data.pre-delete" || name === "data.delete") && !has) {
          this.anomaly(`${name} seq=${body.seq} ${body.collection}/${k}: the kiosk has no such item (already deleted?)`);
        }
      }
      if (name === "data.create") {
        if (keys.length !== 1) this.anomaly(`data.create with ${keys.length} keys`);
        view.set(String(keys[0]), body.record);
      } else if (name === "data.update") {
        if (!Array.isArray(body.records) || body.records.length !== keys.length) this.anomaly(`data.update whose records do not match its keys`);
        keys.forEach((k, i) => view.set(String(k), body.records?.[i]));
      } else if (name === "data.delete") {
        keys.forEach((k) => view.delete(String(k)));
      }
    }
    this.record(name, body);
  }

  record(name, body) {
    const entry = { i: this.log.length, t: performance.now(), name, body };
    this.log.push(entry);
    for (const w of [...this.waiters]) w();
    return entry;
  }

  /** Resolves once pred() is true (checked now and after every message), else rejects. */
  waitFor(pred, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      let timer;
      const check = () => {
        let value;
        try {
          value = pred();
        } catch (e) {
          this.waiters.delete(check);
          clearTimeout(timer);
          reject(e);
          return;
        }
        if (value) {
          this.waiters.delete(check);
          clearTimeout(timer);
          resolve(value);
        }
      };
      timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`${this.label} kiosk: ${what}: not within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  /** The received messages from index `from`, one line each (connect_error runs folded). */
  describe(from = 0, to = this.log.length) {
    const lines = [];
    let errors = 0;
    const t0 = this.log[from]?.t ?? 0;
    for (const e of this.log.slice(from, to)) {
      if (e.name === "connect_error") {
        errors += 1;
        continue;
      }
      if (errors) lines.push(`      (${errors} × connect_error)`);
      errors = 0;
      lines.push(`  #${e.i} +${(e.t - t0).toFixed(0)}ms ${e.name} ${summarize(e)}`);
    }
    if (errors) lines.push(`      (${errors} × connect_error)`);
    return lines.length ? lines.join("\n") : "  (nothing)";
  }

  close() {
    this.socket.io.reconnection(false);
    this.socket.disconnect();
  }
}

function summarize(e) {
  const b = e.body ?? {};
  if (e.name.startsWith("data.")) {
    const recs = e.name === "data.create" ? [b.record] : b.records ?? [];
    const shown = recs.map((r) => (r ? JSON.stringify(r).slice(0, 160) : String(r))).join(" ");
    return `seq=${b.seq} ${b.collection} keys=${JSON.stringify(b.keys)} ${shown}`;
  }
  return JSON.stringify(b).slice(0, 300);
}

// --- expectations -----------------------------------------------------------------------------

/** The record an event carries for `key`. */
function recordFor(entry, key) {
  const b = entry.body;
  if (entry.name === "data.create") return b.record;
  const i = b.keys.indexOf(key);
  return b.records?.[i];
}

function matches(entry, x) {
  if (entry.name !== `data.${x.kind}`) return false;
  const b = entry.body;
  if (b?.collection !== x.collection || !Array.isArray(b.keys) || !b.keys.includes(x.key)) return false;
  if (x.match) {
    const r = recordFor(entry, x.key);
    if (!r) return false;
    for (const [field, value] of Object.entries(x.match)) if (!isDeepStrictEqual(r[field], value)) return false;
  }
  return true;
}

const fmt = (x) => `${x.kind} ${x.collection}/${x.key}${x.match ? ` with ${JSON.stringify(x.match)}` : ""}`;

/** The writes of one phase and the events each must produce, for the exactly-once count. */
class Phase {
  constructor(ctx, name) {
    this.ctx = ctx;
    this.name = name;
    this.from = ctx.kiosk.log.length;
    // Anomalies (seq gaps, no-op events, …) not yet checked by an earlier step count here.
    this.anomaliesFrom = ctx.checkedAnomalies ?? 0;
    this.expected = []; // {collection, key, kind, write}
    this.writes = 0;
  }

  /**
   * Sends one write with the admin token and waits for the kiosk to get, for every affected
   * key, the event `expect(responseData)` names. Returns {data, t0, hits}.
   */
  async write(label, method, path, body, expect) {
    const { kiosk, relay } = this.ctx;
    this.writes += 1;
    const from = kiosk.log.length;
    const t0 = performance.now();
    const res = await directus.api(method, path, body);
    const want = expect(res?.data);
    for (const x of want) this.expected.push({ ...x, write: label });
    const find = () => {
      const hits = [];
      for (const x of want) {
        const hit = kiosk.log.slice(from).find((e) => matches(e, x));
        if (!hit) return null;
        hits.push(hit);
      }
      return hits;
    };
    try {
      const hits = await kiosk.waitFor(find, EVENT_TIMEOUT_MS, `events for "${label}"`);
      return { data: res?.data, t0, hits };
    } catch (e) {
      const missing = want.filter((x) => !kiosk.log.slice(from).some((en) => matches(en, x)));
      throw new Error(
        `${this.ctx.mode}: write "${label}" (${method} ${path} ${body === undefined ? "" : JSON.stringify(body)}) ` +
          `did not reach the kiosk within ${EVENT_TIMEOUT_MS} ms.\nmissing: ${missing.map(fmt).join("; ")}\n` +
          `the kiosk received since the write:\n${kiosk.describe(from)}\n${relay.tail()}`,
      );
    }
  }

  /** Sends a write without waiting for events (the relay is down); counted by assertExactlyOnce. */
  async writeOnly(label, method, path, body, expect) {
    this.writes += 1;
    const res = await directus.api(method, path, body);
    for (const x of expect(res?.data)) this.expected.push({ ...x, write: label });
    return res?.data;
  }

  /** After a quiet period: every expected event exactly once, nothing else, no seq gap. */
  async assertExactlyOnce() {
    const { kiosk, relay } = this.ctx;
    await sleep(QUIET_MS);
    const seen = new Map(); // "kind collection/key" -> [entries]
    for (const e of kiosk.log.slice(this.from)) {
      if (!e.name.startsWith("data.")) continue;
      for (const k of e.body?.keys ?? []) {
        const id = `${kindOf(e.name)} ${e.body.collection}/${k}`;
        if (!seen.has(id)) seen.set(id, []);
        seen.get(id).push(e);
      }
    }
    const want = new Map();
    for (const x of this.expected) {
      for (const kind of x.kind === "delete" ? ["pre-delete", "delete"] : [x.kind]) {
        const id = `${kind} ${x.collection}/${x.key}`;
        if (!want.has(id)) want.set(id, []);
        want.get(id).push(x.write);
      }
    }
    const problems = [];
    for (const [id, writes] of want) {
      const got = seen.get(id) ?? [];
      if (got.length !== writes.length) {
        problems.push(
          `${id}: ${got.length} event(s) for ${writes.length} write(s) [${writes.join(" | ")}]` +
            (got.length ? `:\n${got.map((e) => `    #${e.i} ${e.name} ${summarize(e)}`).join("\n")}` : ""),
        );
      }
    }
    for (const [id, got] of seen) {
      if (!want.has(id)) {
        problems.push(`${id}: ${got.length} event(s) that no write caused:\n${got.map((e) => `    #${e.i} ${e.name} ${summarize(e)}`).join("\n")}`);
      }
    }
    for (const a of kiosk.anomalies.slice(this.anomaliesFrom)) problems.push(`at #${a.i}: ${a.text}`);
    this.ctx.checkedAnomalies = kiosk.anomalies.length;
    if (problems.length) {
      throw new Error(
        `${this.ctx.mode}: ${this.name}: events not exactly once per write (${this.writes} writes, ${this.expected.length} expected events):\n` +
          `${problems.join("\n")}\nthe kiosk received in this phase:\n${kiosk.describe(this.from)}\n${relay.tail()}`,
      );
    }
    return { writes: this.writes, events: [...seen.values()].reduce((n, l) => n + l.length, 0) };
  }
}

/** Differences between the kiosk's view and Directus's items, as lines. */
async function viewDiffs(kiosk) {
  const diffs = [];
  for (const c of COLLECTIONS) {
    const items = await directus.items(c);
    const want = new Map(items.map((r) => [String(r[KEY_FIELD[c]]), r]));
    const view = kiosk.views.get(c);
    for (const [k, r] of want) {
      if (!view.has(k)) diffs.push(`${c}/${k}: missing in the kiosk (Directus: ${JSON.stringify(r)})`);
      else if (!isDeepStrictEqual(view.get(k), r)) diffs.push(`${c}/${k}: kiosk ${JSON.stringify(view.get(k))} != Directus ${JSON.stringify(r)}`);
    }
    for (const [k, r] of view) if (!want.has(k)) diffs.push(`${c}/${k}: in the kiosk but not in Directus: ${JSON.stringify(r)}`);
  }
  return diffs;
}

/** The kiosk's view must equal Directus's items (retried for up to `settleMs`). */
async function assertViewEqualsDirectus(ctx, what, settleMs = 3_000, from = 0) {
  const deadline = Date.now() + settleMs;
  for (;;) {
    const diffs = await viewDiffs(ctx.kiosk);
    if (diffs.length === 0) {
      const sizes = COLLECTIONS.map((c) => `${c} ${ctx.kiosk.views.get(c).size}`).join(", ");
      return sizes;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `${ctx.mode}: ${what}: the kiosk's view differs from Directus's items:\n  ${diffs.join("\n  ")}\n` +
          `the kiosk received:\n${ctx.kiosk.describe(from)}\n${ctx.relay.tail()}`,
      );
    }
    await sleep(200);
  }
}

function percentiles(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
  return { median: rank(50), p99: rank(99), min: sorted[0], max: sorted[sorted.length - 1], n: sorted.length };
}

// --- the suite ----------------------------------------------------------------------------------

const summary = []; // {mode, passed, failed, failedNames, latency}

after(() => {
  report("results per mode:");
  for (const s of summary) {
    report(`  ${s.mode.padEnd(10)} ${s.passed} passed, ${s.failed} failed${s.failedNames.length ? ` (failed: ${s.failedNames.join("; ")})` : ""}`);
  }
  report("");
  report(`latency: PATCH /items/screens/:id sent -> kiosk has the data.update with the new value (${LATENCY_WRITES} writes in sequence)`);
  report(`  ${"mode".padEnd(10)} ${"median".padStart(10)} ${"p99".padStart(10)} ${"min".padStart(10)} ${"max".padStart(10)}`);
  for (const s of summary) {
    const l = s.latency;
    if (!l) report(`  ${s.mode.padEnd(10)} (not measured)`);
    else report(`  ${s.mode.padEnd(10)} ${ms(l.median).padStart(10)} ${ms(l.p99).padStart(10)} ${ms(l.min).padStart(10)} ${ms(l.max).padStart(10)}`);
  }
});

for (const mode of MODES) {
  describe(`${mode} mode`, () => {
    const ctx = { mode, relay: null, kiosk: null, ids: {} };
    const result = { mode, passed: 0, failed: 0, failedNames: [], latency: null };
    summary.push(result);
    const tag = (name) => `${mode}-${RUN}-${name}`;

    const need = () => {
      if (!ctx.relay?.proc || !ctx.kiosk) throw new Error(`${mode}: no relay or kiosk (an earlier step failed)`);
    };
    /** it() that also counts into the per-mode summary. */
    const step = (name, fn) =>
      it(name, { timeout: 240_000 }, async (t) => {
        try {
          await fn(t);
          result.passed += 1;
        } catch (e) {
          result.failed += 1;
          result.failedNames.push(name);
          throw e;
        }
      });

    after(async () => {
      ctx.kiosk?.close();
      if (ctx.relay?.proc) await ctx.relay.stop();
      if (!directus.running()) await directus.start().catch((e) => console.error(e.message));
    });

    step("a relay starts and a kiosk subscribes to the three collections and goes live", async (t) => {
      const port = await freePort();
      ctx.relay = new Relay(mode, port);
      await ctx.relay.start();
      if (mode === "webhook") {
        const { stdout } = await run("bash", [join(SCRIPTS, "flow.sh"), DIRECTUS_DIR, `${ctx.relay.url}/hooks/directus`, ctx.relay.secret]);
        t.diagnostic(`Flow ${stdout.trim()} -> ${ctx.relay.url}/hooks/directus`);
      }
      const kiosk = new Kiosk(ctx.relay.url, mode);
      ctx.kiosk = kiosk;
      try {
        await kiosk.waitFor(() => kiosk.lastAck && kiosk.status?.upstream === "live", 30_000, "subscribe ack and relay.status live");
      } catch (e) {
        throw new Error(`${e.message}\nthe kiosk received:\n${kiosk.describe()}\n${ctx.relay.tail()}`);
      }
      assert.deepEqual(
        Object.values(kiosk.lastAck.modes),
        ["snapshot", "snapshot", "snapshot"],
        `the first subscribe (no since) gets a snapshot of each collection: ${JSON.stringify(kiosk.lastAck)}`,
      );
      const transports = kiosk.log.filter((e) => e.name === "connect").map((e) => e.body.transport);
      assert.deepEqual(transports, ["websocket"], "the kiosk is connected over WebSocket");
      const sizes = await assertViewEqualsDirectus(ctx, "after the first subscribe");
      t.diagnostic(`relay ${ctx.relay.url} (pid ${ctx.relay.proc.pid}), live; view: ${sizes}`);
    });

    step("every REST batch form reaches the kiosk as the right event for every affected key", async (t) => {
      need();
      const ph = new Phase(ctx, "REST writes");
      ctx.batch = ph;
      const S = "screens";
      const created = (c) => (d) => [d].flat().map((r) => ({ collection: c, key: String(r[KEY_FIELD[c]]), kind: "create", match: c === "channels" ? { label: r.label } : c === "screens" ? { name: r.name } : { title: r.title } }));
      const updated = (c, keys, match) => () => keys.map((k) => ({ collection: c, key: String(k), kind: "update", match }));
      const deleted = (c, keys) => () => keys.map((k) => ({ collection: c, key: String(k), kind: "delete" }));

      // screens: integer keys
      const A = (await ph.write("POST one screen", "POST", `/items/${S}`, { name: tag("one"), status: "draft" }, created(S))).data.id;
      const [B, C] = (await ph.write("POST an array of 2 screens", "POST", `/items/${S}`, [{ name: tag("pair-1") }, { name: tag("pair-2") }], created(S))).data.map((r) => r.id);
      const [D, E, F] = (
        await ph.write("POST an array of 3 screens", "POST", `/items/${S}`, [{ name: tag("q-1") }, { name: tag("q-2") }, { name: tag("keep") }], created(S))
      ).data.map((r) => r.id);
      ctx.ids.keep = F;
      await ph.write("PATCH /items/screens/:id", "PATCH", `/items/${S}/${A}`, { status: "published" }, updated(S, [A], { status: "published" }));
      await ph.write("PATCH {keys, data}", "PATCH", `/items/${S}`, { keys: [A, B], data: { sort: 5 } }, updated(S, [A, B], { sort: 5 }));
      await ph.write(
        "PATCH an array of objects",
        "PATCH",
        `/items/${S}`,
        [
          { id: B, name: tag("pair-1b") },
          { id: C, name: tag("pair-2b") },
        ],
        () => [
          { collection: S, key: String(B), kind: "update", match: { name: tag("pair-1b") } },
          { collection: S, key: String(C), kind: "update", match: { name: tag("pair-2b") } },
        ],
      );
      await ph.write(
        "PATCH {query: {filter}, data}",
        "PATCH",
        `/items/${S}`,
        { query: { filter: { name: { _starts_with: tag("q-") } } }, data: { status: "published", sort: 9 } },
        updated(S, [D, E], { status: "published", sort: 9 }),
      );
      await ph.write("DELETE /items/screens/:id", "DELETE", `/items/${S}/${A}`, undefined, deleted(S, [A]));
      await ph.write("DELETE with an array body", "DELETE", `/items/${S}`, [B, C], deleted(S, [B, C]));
      await ph.write("DELETE {keys}", "DELETE", `/items/${S}`, { keys: [D] }, deleted(S, [D]));
      await ph.write("DELETE {query: {filter}}", "DELETE", `/items/${S}`, { query: { filter: { name: { _starts_with: tag("q-") } } } }, deleted(S, [E]));

      // announcements: uuid keys (not linked to a screen: an FK cascade is invisible by design)
      const AN = "announcements";
      const U1 = (await ph.write("POST an announcement", "POST", `/items/${AN}`, { title: tag("ann-1"), body: "first", published: false }, created(AN))).data.id;
      const U2 = (await ph.write("POST a second announcement", "POST", `/items/${AN}`, { title: tag("ann-2"), body: "stays", published: true }, created(AN))).data.id;
      ctx.ids.announcement = U2;
      await ph.write("PATCH /items/announcements/:uuid", "PATCH", `/items/${AN}/${U1}`, { title: tag("ann-1b"), published: true }, updated(AN, [U1], { title: tag("ann-1b"), published: true }));
      await ph.write("DELETE /items/announcements/:uuid", "DELETE", `/items/${AN}/${U1}`, undefined, deleted(AN, [U1]));

      // channels: string keys entered by hand
      const CH = "channels";
      const news = tag("news");
      await ph.write("POST a channel", "POST", `/items/${CH}`, { slug: news, label: "News" }, created(CH));
      await ph.write("POST a second channel", "POST", `/items/${CH}`, { slug: tag("stay"), label: "Stays" }, created(CH));
      ctx.ids.channel = tag("stay");
      await ph.write("PATCH /items/channels/:slug", "PATCH", `/items/${CH}/${news}`, { label: "News 2" }, updated(CH, [news], { label: "News 2" }));
      await ph.write("DELETE /items/channels/:slug", "DELETE", `/items/${CH}/${news}`, undefined, deleted(CH, [news]));
      t.diagnostic(`${ph.writes} writes, ${ph.expected.length} expected events, each received`);
      if (mode === "webhook" && !process.env.E2E_RUST_LOG) {
        // The changes must have come through the Flow, not only through the activity log.
        const log = ctx.relay.log();
        const accepted = (log.match(/webhook accepted/g) ?? []).length;
        const refused = log.split("\n").filter((l) => l.includes("webhook refused"));
        assert.deepEqual(refused, [], "the relay refuses none of the Flow's webhooks");
        assert.ok(accepted >= ph.writes, `the Flow's webhooks reach the relay: ${accepted} accepted for ${ph.writes} writes\n${ctx.relay.tail()}`);
        t.diagnostic(`${accepted} webhooks from the Flow accepted`);
      }
    });

    step("after a quiet period: each write's events exactly once, and the view equals Directus", async (t) => {
      need();
      if (!ctx.batch) throw new Error("the writes step did not run");
      const { writes, events } = await ctx.batch.assertExactlyOnce();
      const sizes = await assertViewEqualsDirectus(ctx, "after the REST writes", 0, ctx.batch.from);
      t.diagnostic(`${writes} writes -> ${events} key events; view equals Directus (${sizes})`);
    });

    step("Directus outage: offline while it is down, live again after it restarts with its data", async (t) => {
      need();
      const { kiosk, relay } = ctx;
      const from = kiosk.log.length;
      let stopped = false;
      try {
        const stop = await directus.stop();
        stopped = true;
        t.diagnostic(`Directus stopped in ${ms(stop.took)}`);
        try {
          await kiosk.waitFor(() => kiosk.log.slice(from).some((e) => e.name === "relay.status" && e.body.upstream === "offline"), 30_000, "relay.status offline after Directus stopped");
        } catch (e) {
          throw new Error(`${e.message}\nthe kiosk received:\n${kiosk.describe(from)}\n${relay.tail()}`);
        }
      } finally {
        if (stopped || !directus.running()) {
          const start = await directus.start();
          t.diagnostic(`Directus started again on port ${DIRECTUS_PORT} in ${ms(start.took)}`);
        }
      }
      const off = kiosk.log.findIndex((e, i) => i >= from && e.name === "relay.status" && e.body.upstream === "offline");
      const t0 = performance.now();
      try {
        await kiosk.waitFor(() => kiosk.log.slice(off).some((e) => e.name === "relay.status" && e.body.upstream === "live"), LIVE_AGAIN_TIMEOUT_MS, "relay.status live after Directus is back");
      } catch (e) {
        throw new Error(`${e.message}\nthe kiosk received:\n${kiosk.describe(from)}\n${relay.tail()}`);
      }
      t.diagnostic(`live again ${ms(performance.now() - t0)} after start.sh returned; statuses: ${kiosk.log.slice(from).filter((e) => e.name === "relay.status").map((e) => e.body.upstream).join(" -> ")}`);
      ctx.outageFrom = from;
    });

    step("after the outage: writes reach the kiosk exactly once, and the view equals Directus", async (t) => {
      need();
      if (ctx.outageFrom === undefined) throw new Error("the outage step did not complete");
      // The phase starts before the outage: nothing the outage causes may reach the kiosk
      // as an event either.
      const ph = new Phase(ctx, "writes after the Directus outage");
      ph.from = ctx.outageFrom;
      const S = "screens";
      const X = (await ph.write("POST a screen after the outage", "POST", `/items/${S}`, { name: tag("after-outage") }, (d) => [{ collection: S, key: String(d.id), kind: "create", match: { name: tag("after-outage") } }])).data.id;
      await ph.write("PATCH it", "PATCH", `/items/${S}/${X}`, { status: "published" }, () => [{ collection: S, key: String(X), kind: "update", match: { status: "published" } }]);
      if (!ctx.ids.channel) {
        ctx.ids.channel = tag("stay");
        await ph.write("POST a channel (the writes step did not)", "POST", "/items/channels", { slug: ctx.ids.channel, label: "Stays" }, () => [{ collection: "channels", key: ctx.ids.channel, kind: "create" }]);
      }
      await ph.write("PATCH a channel", "PATCH", `/items/channels/${ctx.ids.channel}`, { label: "Stays, after the outage" }, () => [{ collection: "channels", key: ctx.ids.channel, kind: "update", match: { label: "Stays, after the outage" } }]);
      await ph.write("DELETE the screen", "DELETE", `/items/${S}/${X}`, undefined, () => [{ collection: S, key: String(X), kind: "delete" }]);
      const { writes, events } = await ph.assertExactlyOnce();
      const sizes = await assertViewEqualsDirectus(ctx, "after the Directus outage", 0, ph.from);
      t.diagnostic(`${writes} writes -> ${events} key events; view equals Directus (${sizes})`);
    });

    /**
     * Stops the relay with SIGTERM (it must exit 0), runs `whileDown` while it is down, starts it
     * again on the same port and waits for the kiosk to reconnect by itself, subscribe again and
     * see the upstream live. Returns {from, ack, epochBefore}.
     */
    async function restartRelay(t, whileDown) {
      need();
      const { kiosk, relay } = ctx;
      const from = kiosk.log.length;
      const epochBefore = kiosk.epoch;
      const exit = await relay.stop();
      assert.deepEqual(exit, { code: 0, signal: null }, `the relay exits 0 on SIGTERM:\n${relay.tail()}`);
      try {
        await kiosk.waitFor(() => kiosk.log.slice(from).some((e) => e.name === "disconnect"), 10_000, "disconnect after the relay stopped");
      } catch (e) {
        throw new Error(`${e.message}\nthe kiosk received:\n${kiosk.describe(from)}\n${relay.tail()}`);
      }
      await whileDown();
      const acksBefore = kiosk.acks;
      await relay.start();
      try {
        // relay.status comes on connect, before the ack: after a new ack it is the new relay's.
        await kiosk.waitFor(() => kiosk.acks > acksBefore && kiosk.status?.upstream === "live", 30_000, "reconnect by itself, subscribe ack and relay.status live");
      } catch (e) {
        throw new Error(`${e.message}\nthe kiosk received:\n${kiosk.describe(from)}\n${relay.tail()}`);
      }
      const ack = kiosk.lastAck;
      assert.deepEqual(ack.sentSince, kiosk.log.slice(from).find((e) => e.name === "subscribe")?.body.since, "the ack answers the re-subscribe");
      assert.equal(ack.sentSince?.epoch, epochBefore, `the kiosk re-subscribed with its since of the old run: ack ${JSON.stringify(ack)}\n${kiosk.describe(from)}`);
      const reasons = kiosk.log.slice(from).filter((e) => e.name === "disconnect").map((e) => e.body.reason);
      t.diagnostic(`relay exited 0; kiosk reconnected (disconnect: ${reasons.join(", ")}); since ${JSON.stringify(ack.sentSince)} -> ack epoch ${ack.epoch} seq ${ack.seq} ${JSON.stringify(ack.modes)}`);
      return { from, ack, epochBefore };
    }

    /** After a quiet period: no seq gap, no event that changes nothing, view equals Directus. */
    async function assertSettled(what, from) {
      const { kiosk, relay } = ctx;
      await sleep(QUIET_MS);
      const bad = kiosk.anomalies.slice(ctx.checkedAnomalies ?? 0).map((a) => `at #${a.i}: ${a.text}`);
      ctx.checkedAnomalies = kiosk.anomalies.length;
      assert.deepEqual(bad, [], `${what}: no duplicates, seq gaps or other anomalies:\n${kiosk.describe(from)}\n${relay.tail()}`);
      return assertViewEqualsDirectus(ctx, `${what}, after a quiet period`, 0, from);
    }

    step("relay stopped (SIGTERM, exit 0) and started again on the same port with its state file: the kiosk resumes, and what changed meanwhile arrives exactly once", async (t) => {
      need();
      // Items to change while the relay is down (made by the writes step, unless it failed).
      ctx.ids.keep ??= (await directus.api("POST", "/items/screens", { name: tag("keep") })).data.id;
      ctx.ids.announcement ??= (await directus.api("POST", "/items/announcements", { title: tag("ann-2"), body: "stays" })).data.id;
      if (!ctx.ids.channel) {
        ctx.ids.channel = tag("stay");
        await directus.api("POST", "/items/channels", { slug: ctx.ids.channel, label: "Stays" });
      }
      await assertSettled("before the relay restart", ctx.kiosk.log.length);
      const ph = new Phase(ctx, "changes while the relay was down");
      const { from, ack, epochBefore } = await restartRelay(t, async () => {
        // Changes while the relay is down: create, update, delete (and the other collections).
        const made = await ph.writeOnly("POST a screen", "POST", "/items/screens", { name: tag("while-down") }, (d) => [{ collection: "screens", key: String(d.id), kind: "create", match: { name: tag("while-down") } }]);
        await ph.writeOnly("PATCH a screen", "PATCH", `/items/screens/${ctx.ids.keep}`, { name: tag("keep-renamed-while-down") }, () => [{ collection: "screens", key: String(ctx.ids.keep), kind: "update" }]);
        await ph.writeOnly("PATCH an announcement", "PATCH", `/items/announcements/${ctx.ids.announcement}`, { body: "changed while the relay was down" }, () => [{ collection: "announcements", key: ctx.ids.announcement, kind: "update" }]);
        await ph.writeOnly("DELETE a channel", "DELETE", `/items/channels/${ctx.ids.channel}`, undefined, () => [{ collection: "channels", key: ctx.ids.channel, kind: "delete" }]);
        t.diagnostic(`while the relay was down: created screen ${made.id}, updated screen ${ctx.ids.keep} and announcement ${ctx.ids.announcement}, deleted channel ${ctx.ids.channel}`);
      });
      const detail = `ack ${JSON.stringify(ack)}; the kiosk received:\n${ctx.kiosk.describe(from)}\n${ctx.relay.tail()}`;
      const stateFile = join(WORK, `state-${mode}`, "state.json");
      if (existsSync(stateFile)) {
        // README, "The state file": a relay that restarts keeps its epoch and seq, so the kiosk
        // resumes; the changes the relay finds on start reach it as events, exactly once.
        assert.equal(ack.epoch, epochBefore, `a relay restarted with its state file keeps its epoch: ${detail}`);
        const modes = Object.values(ack.modes);
        assert.ok(modes.every((m) => /^replay/.test(m)), `a since from the same epoch with nothing missed gets a replay: ${detail}`);
        await ph.assertExactlyOnce();
      } else {
        assert.notEqual(ack.epoch, epochBefore, `a relay restarted without a state file has a new epoch: ${detail}`);
        assert.deepEqual(Object.values(ack.modes), ["snapshot", "snapshot", "snapshot"], `a since from another epoch gets a snapshot: ${detail}`);
        t.diagnostic(`no state file at ${stateFile}: new epoch, snapshot`);
      }
      const sizes = await assertSettled("after the relay restart", from);
      t.diagnostic(`view equals Directus (${sizes})`);
    });

    step("relay restarted on the same port without its state file: new epoch, the kiosk takes a snapshot that equals Directus", async (t) => {
      need();
      const { from, ack, epochBefore } = await restartRelay(t, async () => {
        rmSync(join(WORK, `state-${mode}`), { recursive: true, force: true });
        const made = await directus.api("POST", "/items/screens", { name: tag("while-down-2") });
        await directus.api("PATCH", `/items/screens/${ctx.ids.keep}`, { name: tag("keep-renamed-while-down-2") });
        await directus.api("DELETE", `/items/screens/${made.data.id}`);
        await directus.api("POST", "/items/channels", { slug: tag("while-down-2"), label: "Made while the relay was down" });
      });
      const detail = `ack ${JSON.stringify(ack)}; the kiosk received:\n${ctx.kiosk.describe(from)}\n${ctx.relay.tail()}`;
      assert.notEqual(ack.epoch, epochBefore, `a relay without its state has a new epoch: ${detail}`);
      assert.deepEqual(Object.values(ack.modes), ["snapshot", "snapshot", "snapshot"], `a since from another epoch gets a snapshot: ${detail}`);
      const sizes = await assertSettled("after the restart without state", from);
      t.diagnostic(`epoch ${epochBefore} -> ${ack.epoch}; view equals Directus (${sizes})`);
    });

    step(`latency: ${LATENCY_WRITES} single-item PATCHes, request sent -> data.update received`, async (t) => {
      need();
      const { kiosk } = ctx;
      const ph = new Phase(ctx, "latency writes");
      const key = String(ctx.ids.keep);
      const latencies = [];
      for (let i = 0; i < LATENCY_WRITES; i++) {
        // A random pause, so that writes do not fall into step with the relay's poll cycle
        // (a write sent right after the previous event would always wait a whole interval).
        await sleep(Math.random() * 200);
        const name = tag(`lat-${i}`);
        const { t0, hits } = await ph.write(`PATCH #${i}`, "PATCH", `/items/screens/${key}`, { name }, () => [{ collection: "screens", key, kind: "update", match: { name } }]);
        latencies.push(hits[0].t - t0);
      }
      const p = percentiles(latencies);
      result.latency = p;
      t.diagnostic(`latency over ${p.n} PATCHes: median ${ms(p.median)}, p99 ${ms(p.p99)} (min ${ms(p.min)}, max ${ms(p.max)})`);
      await ph.assertExactlyOnce();
      await assertViewEqualsDirectus(ctx, "after the latency writes", 0, ph.from);
      void kiosk;
    });
  });
}
