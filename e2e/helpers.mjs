// Shared helpers for the end-to-end tests: where the relay is, posting webhooks, and a kiosk
// built on the real socket.io-client that records every event it receives, in order.
//
// run.sh starts one relay and passes its address in the environment; the tests talk to it
// only over HTTP and Socket.IO, as Directus and the kiosks do.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { appendFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { io } from "socket.io-client";
import ioV2 from "socket.io-client-v2";

export const E2E_DIR = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = process.env.REPO_ROOT ?? join(E2E_DIR, "..");

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the suite with e2e/run.sh`);
  return value;
}

/** The relay's base URL, e.g. http://127.0.0.1:40123 */
export const RELAY_URL = required("E2E_RELAY_URL");
export const RELAY_SECRET = required("E2E_RELAY_SECRET");
export const WEBHOOK_PATH = process.env.E2E_WEBHOOK_PATH ?? "/hooks/directus";
/** Where the suite's report lines (latency numbers) are collected for run.sh's summary. */
const REPORT_FILE = process.env.E2E_REPORT;

/** Headless Debian Chromium's arguments for the browser tests. */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** How long to wait for something that should happen at once. */
export const SOON_MS = 5_000;
/** How long to wait to be sure something does NOT happen. */
export const QUIET_MS = 400;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Prints a line in the test output and keeps it for run.sh's summary. */
export function report(t, line) {
  t.diagnostic(line);
  if (REPORT_FILE) appendFileSync(REPORT_FILE, `${line}\n`);
}

/** The captured Directus bodies, one JSON text per line, in order. */
export function fixtureBodies() {
  return readFileSync(join(REPO_ROOT, "tests/fixtures/webhook_bodies.jsonl"), "utf8")
    .split("\n")
    .filter((line) => line.trim() !== "");
}

/**
 * POSTs a webhook body (an object is sent as JSON, a string or Buffer as is) with the secret.
 * Resolves to {status, body, json} as soon as the relay answers.
 */
export async function post(body, { secret = RELAY_SECRET, headers = {} } = {}) {
  const text = typeof body === "string" || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  const all = { "content-type": "application/json", ...headers };
  if (secret !== null) all["x-relay-secret"] = secret;
  const res = await fetch(RELAY_URL + WEBHOOK_PATH, { method: "POST", headers: all, body: text });
  const answer = await res.text();
  let json;
  try {
    json = JSON.parse(answer);
  } catch {
    json = undefined;
  }
  return { status: res.status, body: answer, json };
}

/** POSTs a body that must be accepted (202). */
export async function accept(body) {
  const res = await post(body);
  assert.equal(res.status, 202, `webhook refused: ${res.status} ${res.body} for ${JSON.stringify(body).slice(0, 200)}`);
  return res;
}

/**
 * POSTs a valid change padded to `size` bytes with node's http module (as Directus's axios
 * does): with a Content-Length, or chunked (no length, so the relay only finds out while
 * reading), optionally with `Expect: 100-continue` (as curl does for large bodies: the body
 * is only sent once the server says 100 Continue). Resolves to {status, body} as soon as the
 * relay answers, or to {status: 0, error} when the connection failed before any answer.
 */
export function postLarge(size, { chunked = false, expectContinue = false } = {}) {
  const url = new URL(RELAY_URL + WEBHOOK_PATH);
  return new Promise((resolve) => {
    const headers = { "content-type": "application/json", "x-relay-secret": RELAY_SECRET };
    if (!chunked) headers["content-length"] = String(size);
    if (expectContinue) headers.expect = "100-continue";
    const req = http.request({ host: url.hostname, port: url.port, path: url.pathname, method: "POST", headers, agent: false });
    let settled = false;
    const settle = (value) => {
      if (!settled) {
        settled = true;
        resolve(value);
      }
      req.destroy();
    };
    req.on("response", (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (text += d));
      res.on("end", () => settle({ status: res.statusCode, body: text }));
      res.on("error", () => settle({ status: res.statusCode, body: text }));
    });
    req.on("error", (e) => settle({ status: 0, body: "", error: e.code ?? e.message }));
    const head = '{"event":"screens.items.create","key":"too-large","collection":"screens","payload":{"name":"';
    const tail = '"}}';
    const chunk = Buffer.alloc(64 * 1024, "a");
    const send = () => {
      req.write(head);
      let left = size - head.length - tail.length;
      const pump = () => {
        while (left > 0 && !settled) {
          const n = Math.min(left, chunk.length);
          left -= n;
          if (!req.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
            req.once("drain", pump);
            return;
          }
        }
        if (!settled) req.end(tail);
      };
      pump();
    };
    if (expectContinue) {
      req.on("continue", send);
      req.flushHeaders();
    } else {
      send();
    }
  });
}

/**
 * A kiosk: one socket.io-client socket on one transport, with every server event it receives
 * queued in arrival order as {name, body, at} (`at` from performance.now()).
 *
 * `legacy: true` uses socket.io-client 2.x (Engine.IO 3), as old signage players do: it has no
 * handshake `auth`, so the token goes in the query; for a namespace other than `/` the query
 * is given to the Manager only (socket.io-client 2.x also writes the socket's query into the
 * namespace's name, which the relay then does not know).
 */
export class Kiosk {
  /**
   * @param {"websocket"|"polling"} transport
   * @param {object} [auth] the handshake's auth, e.g. {token}
   * @param {{namespace?: string, legacy?: boolean}} [options]
   */
  constructor(transport, label = transport, auth = undefined, { namespace = "/", legacy = false } = {}) {
    this.transport = transport;
    this.label = label;
    this.legacy = legacy;
    this.queue = [];
    this.received = 0;
    this.waiter = null;
    const record = (name, body) => {
      this.received += 1;
      this.queue.push({ name, body, at: performance.now() });
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = null;
        w();
      }
    };
    const options = {
      transports: [transport],
      upgrade: false,
      forceNew: true,
      reconnection: false,
      timeout: SOON_MS,
      autoConnect: false,
    };
    if (legacy) {
      const manager = new ioV2.Manager(RELAY_URL, { ...options, query: auth });
      this.socket = manager.socket(namespace);
      // socket.io-client 2.x has no onAny: every event passes through onevent.
      const onevent = this.socket.onevent;
      this.socket.onevent = function (packet) {
        const [name, body] = packet.data ?? [];
        record(name, body);
        return onevent.call(this, packet);
      };
    } else {
      const url = namespace === "/" ? RELAY_URL : `${RELAY_URL}${namespace}`;
      this.socket = io(url, { ...options, auth });
      this.socket.onAny(record);
    }
  }

  /** Connects (or reconnects after disconnect()) and resolves once Socket.IO says so. */
  connect() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`${this.label}: no connect within ${SOON_MS} ms`)), SOON_MS);
      const onConnect = () => done();
      const onError = (e) => done(new Error(`${this.label}: connect_error: ${e?.message ?? e}`));
      // socket.io-client 2.x reports a refused connection as "error".
      const errorEvent = this.legacy ? "error" : "connect_error";
      const done = (err) => {
        clearTimeout(timer);
        this.socket.off("connect", onConnect);
        this.socket.off(errorEvent, onError);
        if (err) reject(err);
        else resolve();
      };
      this.socket.on("connect", onConnect);
      this.socket.on(errorEvent, onError);
      this.socket.connect();
    });
  }

  /** Connects and returns the relay.status the relay sends first. */
  async open() {
    await this.connect();
    const first = await this.next();
    assert.equal(first.name, "relay.status", `${this.label}: the first event is relay.status`);
    return first.body;
  }

  /** The transport actually in use (to prove the test ran on the one it asked for). */
  get transportName() {
    return this.socket.io.engine?.transport?.name;
  }

  /** The next event, waiting up to `ms`. */
  async next(ms = SOON_MS) {
    const deadline = Date.now() + ms;
    while (this.queue.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.label}: no event within ${ms} ms`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = null;
    }
    return this.queue.shift();
  }

  /** The next `n` events. */
  async take(n, ms = SOON_MS) {
    const out = [];
    for (let i = 0; i < n; i++) out.push(await this.next(ms));
    return out;
  }

  /** Asserts that no event arrives within `ms` (and none is waiting). */
  async none(ms = QUIET_MS, why = "") {
    await sleep(ms);
    assert.deepEqual(
      this.queue.map((e) => `${e.name} seq=${e.body?.seq} ${e.body?.collection}`),
      [],
      `${this.label}: unexpected events ${why}`,
    );
  }

  /**
   * Sends `subscribe` and resolves to {ack, before}: `before` is how many events had arrived
   * when the ack did, so a test can tell that replayed events came after the ack.
   */
  subscribe(request, ms = SOON_MS) {
    return new Promise((resolve, reject) => {
      // socket.io-client 2.x has no emit timeout of its own.
      const timer = setTimeout(() => reject(new Error(`${this.label}: no subscribe ack within ${ms} ms`)), ms);
      this.socket.emit("subscribe", request, (ack) => {
        clearTimeout(timer);
        resolve({ ack, before: this.received });
      });
    });
  }

  disconnect() {
    this.socket.disconnect();
  }

  close() {
    this.socket.disconnect();
    this.socket.io.engine?.close();
  }
}

/** Closes `kiosk` when test `t` ends, passed or failed, so a failed test leaves no socket open. */
export function closing(t, kiosk) {
  t.after(() => kiosk.close());
  return kiosk;
}

/** Asserts a value is an RFC 3339 UTC time such as 2026-11-28T17:00:00.123Z. */
export function assertIsoTime(value, what) {
  assert.equal(typeof value, "string", `${what} is a string`);
  assert.match(value, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/, `${what} is an ISO time`);
  assert.ok(!Number.isNaN(Date.parse(value)), `${what} parses`);
}

/** Median and p99 (nearest rank) of a list of numbers. */
export function percentiles(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
  return { median: rank(50), p99: rank(99), max: sorted[sorted.length - 1], n: sorted.length };
}

/** A label unique to this run, for keys that must not collide with other tests' items. */
export const RUN_ID = `${process.pid.toString(36)}${Date.now().toString(36)}`;

/** A free port on the loopback address. */
export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

/**
 * Starts a relay of the test's own (the binary under test) with `toml`, its listen and
 * state_dir lines added, and waits until it answers /healthz (60 s at most). `dir` and `port`
 * default to new ones; give the same again to restart it. Resolves to {url, dir, port,
 * post(body) with `secret`, stop() (SIGTERM; resolves to the exit code), log()}.
 */
export async function startOwnRelay(toml, { dir, port, secret } = {}) {
  dir ??= mkdtempSync(join(tmpdir(), "relay-own-"));
  port ??= await freePort();
  writeFileSync(join(dir, "relay.toml"), `listen = "127.0.0.1:${port}"\nstate_dir = "${dir}"\n${toml}`);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("RELAY_")));
  const child = spawn(process.env.E2E_RELAY_BIN, ["--config", join(dir, "relay.toml")], { env, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.stderr.on("data", (d) => (log += d));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  while (!(await fetch(`${url}/healthz`).then((r) => r.ok, () => false))) {
    assert.ok(Date.now() < deadline && child.exitCode === null, `the relay did not start:\n${log}`);
    await sleep(100);
  }
  const postTo = async (body) => {
    const res = await fetch(`${url}${WEBHOOK_PATH}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-relay-secret": secret },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 202, `webhook refused: ${await res.text()}`);
  };
  const stop = () => new Promise((done) => {
    if (child.exitCode !== null) return done(child.exitCode);
    child.once("exit", (code) => done(code));
    child.kill("SIGTERM");
  });
  return { url, dir, port, post: postTo, stop, log: () => log };
}
