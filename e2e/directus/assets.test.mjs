// The files cache ([assets]) against a REAL Directus 12.4.0, run by e2e/directus/run.sh after
// relay.test.mjs (same Directus).
//
// Set-up through Directus's REST API: a collection `posters` with an image field (uuid, `file`
// special, relation to directus_files) and a files list `slides` (the `files` special through
// the junction `posters_files`), read permission for the relay's user (and on directus_files, directus_fields and
// directus_relations); real PNG images and a
// 24 MB "video" uploaded through /files; a poster that uses them; a `screens` item for the
// other token. Then, against one relay in poll mode:
//   1. the relay finds both fields from /fields and /relations, caches the three files, and
//      serves the same bytes as Directus's /assets, a transformation (?width=32) the same as
//      Directus's, a Range of the video; a token for another collection gets 404;
//   2. Directus stopped: everything cached is still served (also after a relay restart, and
//      after a kill -9); a variant never fetched is a 504;
//   3. Directus back: a changed image is fetched and served; a stream of new images keeps the
//      cache under max_bytes (evicting the unreferenced ones), and the referenced ones stay;
//      a file replaced under the same id is fetched again; a kill -9 during a video's download
//      leaves no partial file, and the video is served whole.
// A kiosk page in headless Chromium, served by the relay's [site] and built on relay-client.js,
// shows the poster's image from the relay while Directus is up, and again after Directus is
// stopped and the relay restarted (the page reloaded): the same bytes, and a Range of the video
// from the page.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { appendFileSync, closeSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import zlib from "node:zlib";
import { chromium } from "playwright-core";
import { execFile } from "node:child_process";
import { directusEnv, freePort, required } from "./lib.mjs";

const DIRECTUS_DIR = required("E2E_DIRECTUS_DIR");
const DIRECTUS_PORT = required("E2E_DIRECTUS_PORT");
const WORK = required("E2E_WORK");
const RELAY_BIN = required("E2E_RELAY_BIN");
const SCRIPTS = required("E2E_DIRECTUS_SCRIPTS");
const REPORT_FILE = process.env.E2E_REPORT;
const DIRECTUS_URL = `http://127.0.0.1:${DIRECTUS_PORT}`;
const LOBBY = `e2e-lobby-${Math.random().toString(36).slice(2)}0123456789`;
const OTHER = `e2e-other-${Math.random().toString(36).slice(2)}0123456789`;
const MAX_BYTES = 40 << 20;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function report(line) {
  if (REPORT_FILE) appendFileSync(REPORT_FILE, `${line}\n`);
  else console.log(line);
}

function run(cmd, args) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 180_000 }, (error, stdout, stderr) =>
      error ? reject(new Error(`${cmd} ${args.join(" ")}: ${stderr}${stdout}`)) : resolve(stdout));
  });
}

async function api(method, path, body) {
  const res = await fetch(DIRECTUS_URL + path, {
    method,
    headers: { authorization: `Bearer ${directusEnv().DIRECTUS_ADMIN_TOKEN}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`Directus ${method} ${path} -> HTTP ${res.status}: ${text.slice(0, 500)}`);
  return text ? JSON.parse(text) : null;
}

/** Uploads bytes through Directus's /files; returns the file id. */
async function upload(name, type, bytes) {
  const form = new FormData();
  form.append("title", name);
  form.append("file", new Blob([bytes], { type }), name);
  const res = await fetch(`${DIRECTUS_URL}/files`, {
    method: "POST",
    headers: { authorization: `Bearer ${directusEnv().DIRECTUS_ADMIN_TOKEN}` },
    body: form,
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`upload ${name} -> HTTP ${res.status}: ${text.slice(0, 500)}`);
  return JSON.parse(text).data.id;
}

/** Replaces a file's bytes under the same id (Directus's "Replace file": PATCH /files/<id>). */
async function replace(id, name, type, bytes) {
  const form = new FormData();
  form.append("file", new Blob([bytes], { type }), name);
  const res = await fetch(`${DIRECTUS_URL}/files/${id}`, {
    method: "PATCH",
    headers: { authorization: `Bearer ${directusEnv().DIRECTUS_ADMIN_TOKEN}` },
    body: form,
  });
  if (!res.ok) throw new Error(`replace ${id} -> HTTP ${res.status}: ${(await res.text()).slice(0, 500)}`);
}

/** What Directus's own /assets gives for a file (admin token). */
async function directusBytes(id, query = "") {
  const res = await fetch(`${DIRECTUS_URL}/assets/${id}${query}`, {
    headers: { authorization: `Bearer ${directusEnv().DIRECTUS_ADMIN_TOKEN}` },
  });
  assert.equal(res.status, 200, `Directus /assets/${id}${query}`);
  return Buffer.from(await res.arrayBuffer());
}

/** A real PNG of w x h pixels of noise from `seed` (so that each file differs). */
function png(w, h, seed) {
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(body) >>> 0);
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const raw = Buffer.alloc((w * 3 + 1) * h);
  let x = Math.imul(seed, 2654435761) >>> 0;
  for (let i = 0; i < raw.length; i++) {
    if (i % (w * 3 + 1) === 0) continue; // filter byte 0
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    raw[i] = x >>> 24;
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", zlib.deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

// --- the relay --------------------------------------------------------------------------------

class Relay {
  constructor(port) {
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.logFile = join(WORK, "relay-assets.log");
    this.pidFile = join(WORK, "relay-assets.pid");
    this.configFile = join(WORK, "relay-assets.toml");
    this.proc = null;
  }

  config() {
    const { DIRECTUS_RELAY_TOKEN } = directusEnv();
    return `listen = "127.0.0.1:${this.port}"
state_dir = "${join(WORK, "state-assets")}"
shutdown_grace = "2s"
persist_interval = "500ms"

[webhook]
secret = "e2e-assets-secret-0123456789"

[directus]
url = "${DIRECTUS_URL}"
token = "${DIRECTUS_RELAY_TOKEN}"
mode = "poll"
poll_interval = "200ms"
reconcile_interval = "2s"

[assets]
enabled = true
max_bytes = ${MAX_BYTES}

[site]
dir = "${join(WORK, "assets-site")}"

[[collections]]
name = "posters"

[[collections]]
name = "screens"

[[clients.tokens]]
name = "lobby"
token = "${LOBBY}"
collections = ["posters"]

[[clients.tokens]]
name = "other"
token = "${OTHER}"
collections = ["screens"]
`;
  }

  async start() {
    writeFileSync(this.configFile, this.config());
    appendFileSync(this.logFile, `----- e2e: assets relay start at ${new Date().toISOString()}\n`);
    const fd = openSync(this.logFile, "a");
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("RELAY_")));
    env.RUST_LOG = "info,directus_relay::assets=debug";
    this.proc = spawn(RELAY_BIN, ["--config", this.configFile], { stdio: ["ignore", fd, fd], env });
    closeSync(fd);
    writeFileSync(this.pidFile, String(this.proc.pid));
    this.exited = new Promise((resolve) => this.proc.on("exit", resolve));
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const res = await fetch(`${this.url}/readyz`);
        if (res.status === 200) return;
      } catch {}
      if (Date.now() > deadline) throw new Error(`the relay is not ready within 30 s:\n${this.tail()}`);
      await sleep(50);
    }
  }

  async stop(signal = "SIGTERM") {
    if (!this.proc) return;
    this.proc.kill(signal);
    await this.exited;
    this.proc = null;
  }

  tail() {
    return readFileSync(this.logFile, "utf8").split("\n").slice(-30).join("\n");
  }

  async assets() {
    const res = await fetch(`${this.url}/status.json`);
    return (await res.json()).assets;
  }

  async until(what, done, timeoutMs = 60_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const a = await this.assets();
      if (done(a)) return a;
      if (Date.now() > deadline) throw new Error(`waited in vain for ${what}: ${JSON.stringify(a)}\n${this.tail()}`);
      await sleep(20);
    }
  }

  async get(id, query = "", headers = {}) {
    const res = await fetch(`${this.url}/assets/${id}?${query}`, { headers });
    return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
  }
}

// --- the tests --------------------------------------------------------------------------------

/** The kiosk page: the first poster's image, from the relay, with relay-client.js. */
const PAGE = `<!doctype html>
<meta charset="utf-8">
<img id="cover" alt="">
<script src="/socket.io/socket.io.min.js"></script>
<script type="module">
  import { connectRelay } from "/relay-client.js";
  const query = new URLSearchParams(location.search);
  const relay = connectRelay({ token: query.get("token"), device: "poster-wall" });
  window.relay = relay;
  const posters = relay.collection("posters");
  posters.on("change", () => {
    const poster = [...posters.values()][0];
    if (poster && poster.image) document.getElementById("cover").src = relay.asset(poster.image);
  });
</script>
`;

describe("files cache against Directus 12.4.0", { concurrency: false }, () => {
  const files = {};
  let relay;
  let browser;
  let page;

  /** The page's image: loaded, and its bytes as the page fetched them. */
  async function pageImage() {
    await page.waitForFunction(() => {
      const img = document.getElementById("cover");
      return img.src && img.complete && img.naturalWidth > 0;
    }, null, { timeout: 60_000 });
    return page.evaluate(async () => {
      const img = document.getElementById("cover");
      const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
      return { width: img.naturalWidth, src: img.src, bytes: Array.from(bytes) };
    });
  }

  before(async () => {
    await api("POST", "/collections", {
      collection: "posters",
      meta: { icon: "image", accountability: "all" },
      schema: {},
      fields: [
        { field: "id", type: "integer", meta: { hidden: true, readonly: true, interface: "input" }, schema: { is_primary_key: true, has_auto_increment: true } },
        { field: "title", type: "string", meta: { interface: "input" }, schema: {} },
        { field: "image", type: "uuid", meta: { special: ["file"], interface: "file-image" }, schema: {} },
      ],
    });
    await api("POST", "/relations", { collection: "posters", field: "image", related_collection: "directus_files", schema: { on_delete: "SET NULL" } });
    await api("POST", "/collections", {
      collection: "posters_files",
      meta: { hidden: true, icon: "import_export" },
      schema: {},
      fields: [
        { field: "id", type: "integer", meta: { hidden: true }, schema: { is_primary_key: true, has_auto_increment: true } },
        { field: "posters_id", type: "integer", meta: { hidden: true }, schema: {} },
        { field: "directus_files_id", type: "uuid", meta: { hidden: true }, schema: {} },
      ],
    });
    await api("POST", "/fields/posters", { field: "slides", type: "alias", meta: { special: ["files"], interface: "files" } });
    await api("POST", "/relations", { collection: "posters_files", field: "directus_files_id", related_collection: "directus_files", meta: { one_field: null, junction_field: "posters_id" }, schema: { on_delete: "SET NULL" } });
    await api("POST", "/relations", { collection: "posters_files", field: "posters_id", related_collection: "posters", meta: { one_field: "slides", junction_field: "directus_files_id" }, schema: { on_delete: "SET NULL" } });
    const policy = (await api("GET", `/policies?filter[name][_eq]=${encodeURIComponent("Relay (read-only)")}&fields=id`)).data[0].id;
    // The schema (to find the file fields) and the files themselves.
    await api("POST", "/permissions", ["posters", "posters_files", "directus_files", "directus_fields", "directus_relations"].map((collection) => ({ policy, collection, action: "read", fields: ["*"], permissions: {} })));

    files.cover = await upload("cover.png", "image/png", png(400, 300, 1));
    files.slide = await upload("slide.png", "image/png", png(300, 200, 2));
    const video = Buffer.alloc(24 << 20);
    for (let i = 0; i < video.length; i += 4) video.writeUInt32LE((i * 2654435761) >>> 0, i);
    files.videoBytes = video;
    files.video = await upload("clip.mp4", "video/mp4", video);
    const poster = await api("POST", "/items/posters", {
      title: "Lobby",
      image: files.cover,
      slides: [{ directus_files_id: files.slide }, { directus_files_id: files.video }],
    });
    files.poster = poster.data.id;
    await api("POST", "/items/screens", { name: "assets e2e" });

    mkdirSync(join(WORK, "assets-site"), { recursive: true });
    writeFileSync(join(WORK, "assets-site", "index.html"), PAGE);
    relay = new Relay(await freePort());
    await relay.start();
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      timeout: 30_000,
    });
    page = await browser.newPage({ viewport: { width: 800, height: 600 } });
  });

  after(async () => {
    await browser?.close();
    await relay?.stop();
    if (!existsDirectus()) await run("bash", [join(SCRIPTS, "start.sh"), DIRECTUS_DIR, DIRECTUS_PORT]).catch(() => {});
  });

  it("finds the file fields and caches the files the poster references", async () => {
    const t0 = Date.now();
    const a = await relay.until("three files cached", (a) => a && a.referenced === 3 && a.referenced_cached === 3);
    report(`assets: 3 files (${(a.bytes / 2 ** 20).toFixed(1)} MiB) cached ${Date.now() - t0} ms after the relay was ready`);
    assert.deepEqual(a.fields, ["posters: image (file), slides.directus_files_id (files list)", "screens: no file fields"]);
  });

  it("serves the same bytes as Directus, transformations and ranges too", async () => {
    for (const id of [files.cover, files.slide, files.video]) {
      const got = await relay.get(id, `token=${LOBBY}`);
      assert.equal(got.status, 200, id);
      assert.ok(got.body.equals(await directusBytes(id)), `bytes of ${id}`);
    }
    assert.ok((await relay.get(files.video, `token=${LOBBY}`)).body.equals(files.videoBytes));
    const small = await relay.get(files.cover, `width=32&token=${LOBBY}`);
    assert.equal(small.status, 200);
    assert.ok(small.body.equals(await directusBytes(files.cover, "?width=32")), "the transformation as Directus makes it");
    const bearer = await relay.get(files.video, "", { authorization: `Bearer ${LOBBY}`, range: "bytes=1000000-1999999" });
    assert.equal(bearer.status, 206);
    assert.equal(bearer.headers.get("content-range"), `bytes 1000000-1999999/${files.videoBytes.length}`);
    assert.ok(bearer.body.equals(files.videoBytes.subarray(1000000, 2000000)));
    const etag = (await relay.get(files.cover, `token=${LOBBY}`)).headers.get("etag");
    assert.equal((await relay.get(files.cover, `token=${LOBBY}`, { "if-none-match": etag })).status, 304);
  });

  it("a kiosk page from the relay shows the image from the relay, the same bytes as Directus's", async () => {
    await page.goto(`${relay.url}/app/?token=${LOBBY}`);
    const shown = await pageImage();
    assert.equal(shown.width, 400);
    assert.ok(shown.src.startsWith(`${relay.url}/assets/${files.cover}`), shown.src);
    assert.ok(Buffer.from(shown.bytes).equals(await directusBytes(files.cover)), "the page's image is Directus's file");
  });

  it("gives a token for another collection, or none, a 404", async () => {
    assert.equal((await relay.get(files.cover, `token=${OTHER}`)).status, 404);
    assert.equal((await relay.get(files.cover)).status, 404);
  });

  it("serves the cached files while Directus is down, also after a restart and a kill -9", async () => {
    await run("bash", [join(SCRIPTS, "stop.sh"), DIRECTUS_DIR]);
    await relay.until("the variant cached", (a) => a.variants >= 4);
    for (const restarted of [false, "SIGTERM", "SIGKILL"]) {
      if (restarted) {
        await relay.stop(restarted);
        await relay.start();
      }
      assert.ok((await relay.get(files.video, `token=${LOBBY}`)).body.equals(files.videoBytes), `video (restarted: ${restarted})`);
      assert.equal((await relay.get(files.cover, `token=${LOBBY}`)).status, 200);
      assert.equal((await relay.get(files.cover, `width=32&token=${LOBBY}`)).status, 200);
      const missing = await relay.get(files.cover, `width=33&token=${LOBBY}`);
      assert.equal(missing.status, 504);
      assert.match(missing.body.toString(), /Directus cannot be reached/);
      // The screen power-cycled too: its page loads again from the relay alone, with the
      // picture, and seeks in the video.
      await page.reload();
      const shown = await pageImage();
      assert.equal(shown.width, 400, `the page's image with Directus down (restarted: ${restarted})`);
      const seek = await page.evaluate(async (url) => {
        const res = await fetch(url, { headers: { range: "bytes=5000000-5000099" } });
        return { status: res.status, bytes: Array.from(new Uint8Array(await res.arrayBuffer())) };
      }, `${relay.url}/assets/${files.video}?token=${LOBBY}`);
      assert.equal(seek.status, 206);
      assert.ok(Buffer.from(seek.bytes).equals(files.videoBytes.subarray(5000000, 5000100)), "a seek into the video");
    }
    await run("bash", [join(SCRIPTS, "start.sh"), DIRECTUS_DIR, DIRECTUS_PORT]);
  });

  it("fetches a changed image, and keeps the cache under max_bytes through a stream of new ones", async () => {
    let maxSeen = 0;
    let evictions = 0;
    for (let i = 0; i < 8; i++) {
      const id = await upload(`new-${i}.png`, "image/png", png(1000, 1000, 10 + i));
      await api("PATCH", `/items/posters/${files.poster}`, { image: id });
      const want = await directusBytes(id);
      const deadline = Date.now() + 60_000;
      for (;;) {
        const a = await relay.assets();
        maxSeen = Math.max(maxSeen, a.bytes);
        evictions = a.evictions;
        const got = await relay.get(id, `token=${LOBBY}`);
        if (got.status === 200 && a.referenced_cached === a.referenced) {
          assert.ok(got.body.equals(want), `new image ${i}`);
          break;
        }
        if (Date.now() > deadline) throw new Error(`image ${i} not cached: ${JSON.stringify(a)}\n${relay.tail()}`);
        await sleep(100);
      }
      assert.ok(maxSeen <= MAX_BYTES, `cache ${maxSeen} bytes over its budget ${MAX_BYTES}`);
    }
    // A file replaced in Directus under the same id is fetched again.
    const replaced = png(320, 240, 99);
    await replace(files.slide, "slide.png", "image/png", replaced);
    const fresh = await directusBytes(files.slide);
    const deadline = Date.now() + 60_000;
    for (;;) {
      const got = await relay.get(files.slide, `token=${LOBBY}`);
      if (got.status === 200 && got.body.equals(fresh)) break;
      if (Date.now() > deadline) throw new Error(`the replaced slide is not served: ${JSON.stringify(await relay.assets())}\n${relay.tail()}`);
      await sleep(100);
    }
    report("assets: a file replaced in Directus (PATCH /files/<id>) is fetched again and served");

    // kill -9 while a new 24 MB video is being downloaded (or just after): after the restart
    // no partial file is left, and the video is served whole.
    const clip = Buffer.alloc(24 << 20, 7);
    for (let i = 0; i < clip.length; i += 4096) clip.writeUInt32LE(i, i);
    const clipId = await upload("clip2.mp4", "video/mp4", clip);
    await api("PATCH", `/items/posters/${files.poster}`, { image: clipId });
    // The relay has seen the change and the video is not cached yet: it is being downloaded.
    const caught = await relay.until("the download under way", (a) => a.referenced_cached < a.referenced, 10_000).then(() => true, () => false);
    report(`assets: kill -9 ${caught ? "while the new video was being downloaded" : "after the new video was cached (the download was too quick to catch)"}`);
    await relay.stop("SIGKILL");
    const tmp = join(WORK, "state-assets", "assets", "tmp");
    const partial = readdirSync(tmp);
    await relay.start();
    const left = readdirSync(tmp).filter((f) => partial.includes(f));
    assert.deepEqual(left, [], "no partial download left after the restart");
    report(`assets: ${partial.length} partial download(s) in tmp/ at the kill, none after the restart`);
    const until = Date.now() + 60_000;
    for (;;) {
      const got = await relay.get(clipId, `token=${LOBBY}`);
      const a = await relay.assets();
      if (got.status === 200 && a.referenced_cached === a.referenced) {
        assert.ok(got.body.equals(clip), "the video whole after kill -9");
        break;
      }
      if (Date.now() > until) throw new Error(`the new video is not served: ${got.status} ${JSON.stringify(a)}\n${relay.tail()}`);
      await sleep(100);
    }
    report(`assets: 8 new 3 MB images: cache at most ${(maxSeen / 2 ** 20).toFixed(1)} of ${MAX_BYTES / 2 ** 20} MiB, ${evictions} evictions`);
    assert.ok(evictions >= 1, "unreferenced images were evicted");
    assert.ok((await relay.get(files.video, `token=${LOBBY}`)).body.equals(files.videoBytes), "the referenced video stays");
  });
});

function existsDirectus() {
  try {
    readFileSync(join(DIRECTUS_DIR, "directus.pid"));
    return true;
  } catch {
    return false;
  }
}
