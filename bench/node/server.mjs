// The Node.js baseline of bench/run.sh: what the classic Directus hook extension does — a
// socket.io server that, for every item change, calls io.emit("data.<action>", body) to every
// connected screen — fed by the same webhook the relay takes, so that tools/loadgen drives both
// unchanged.
//
//   node server.mjs [--port 0] [--host 127.0.0.1] [--path /hooks/directus]
//   secret: $RELAY_SECRET (or --secret), checked against the X-Relay-Secret header
//
// Prints one line when it listens: "node-baseline listening addr=HOST:PORT pid=PID".
// The event body has the relay's shape (README, "What kiosks receive") without what only the
// relay knows (epoch, mirror, rooms): {collection, keys, payload, records: [{...payload, id}],
// seq, ts} for create/update, {collection, keys, records: [{id}], seq, ts} for delete, with one
// seq counter for the process. Nothing is kept: no mirror, no replay, no per-kiosk queue bound.

import { createServer } from "node:http";
import { timingSafeEqual } from "node:crypto";
import { parseArgs } from "node:util";
import { Server } from "socket.io";

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: "0" },
    host: { type: "string", default: "127.0.0.1" },
    path: { type: "string", default: "/hooks/directus" },
    secret: { type: "string", default: process.env.RELAY_SECRET ?? "" },
  },
});
if (!args.secret) {
  console.error("node-baseline: set $RELAY_SECRET (or --secret) to the webhook secret");
  process.exit(2);
}
const secret = Buffer.from(args.secret);
/** The relay's default limit on a webhook body (limits.max_event_bytes is 256 KiB). */
const MAX_BODY = 1 << 20;
const ACTIONS = new Set(["create", "update", "delete"]);

let seq = 0;

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(text),
  });
  res.end(text);
}

function secretMatches(value) {
  if (typeof value !== "string") return false;
  const given = Buffer.from(value);
  return given.length === secret.length && timingSafeEqual(given, secret);
}

/** A Directus Flow body ({{$trigger}}) into [event name, body to emit], or an error string. */
function toEvent(change) {
  if (change === null || typeof change !== "object" || Array.isArray(change)) {
    return "body must be a JSON object such as Directus's {{$trigger}}";
  }
  if (typeof change.event !== "string") return '"event" must be a string';
  const match = /^(?:(.+)\.)?items\.(create|update|delete)$/.exec(change.event);
  if (!match || !ACTIONS.has(match[2])) return `unknown event ${JSON.stringify(change.event)}`;
  const action = match[2];
  const collection = change.collection ?? match[1];
  if (typeof collection !== "string" || !collection) return '"collection" is missing';
  const rawKeys = change.keys ?? (change.key !== undefined ? [change.key] : undefined);
  if (!Array.isArray(rawKeys) || rawKeys.length === 0) return '"keys" (or "key") is missing';
  const keys = rawKeys.map(String);
  seq += 1;
  const ts = new Date().toISOString();
  if (action === "delete") {
    return [`data.${action}`, { collection, keys, records: keys.map((id) => ({ id })), seq, ts }];
  }
  const payload = change.payload ?? {};
  const records = rawKeys.map((id) => ({ ...payload, id }));
  const body =
    action === "create"
      ? { collection, keys, payload, record: records[0], seq, ts }
      : { collection, keys, payload, records, seq, ts };
  return [`data.${action}`, body];
}

const http = createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (path === "/healthz") return reply(res, 200, { ok: true });
  if (path !== args.path) return reply(res, 404, { ok: false, error: "not found" });
  if (req.method !== "POST") return reply(res, 405, { ok: false, error: "use POST" });
  if (!secretMatches(req.headers["x-relay-secret"])) {
    req.resume();
    return reply(res, 401, { ok: false, error: "the X-Relay-Secret header does not match" });
  }
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size <= MAX_BODY) chunks.push(chunk);
  });
  req.on("end", () => {
    if (size > MAX_BODY) return reply(res, 413, { ok: false, error: "body too large" });
    let change;
    try {
      change = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch (e) {
      return reply(res, 400, { ok: false, error: `body is not valid JSON: ${e.message}` });
    }
    const event = toEvent(change);
    if (typeof event === "string") return reply(res, 400, { ok: false, error: event });
    const [name, body] = event;
    io.emit(name, body);
    reply(res, 202, { ok: true, collection: body.collection, keys: body.keys.length });
  });
});

// loadgen keeps its webhook connections open between posts (every 4 s at 1 event/s); Node's
// 5 s default would race it and cost posts, hyper has no such timeout.
http.keepAliveTimeout = 60_000;

// socket.io's defaults, as a Directus extension would get them, less the bundled client file.
const io = new Server(http, { serveClient: false, cors: { origin: "*" } });

function shutdown() {
  io.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

http.listen(Number(args.port), args.host, () => {
  const { address, port } = http.address();
  console.log(`node-baseline listening addr=${address}:${port} pid=${process.pid}`);
});
