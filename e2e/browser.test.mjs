// The reference kiosk page (examples/kiosk.html) in headless Debian Chromium, driven by
// playwright-core: it is served, with the socket.io-client browser bundle, by a small static
// server, and shows the `screens` collection the relay sends it.

import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { accept, CHROMIUM_ARGS as ARGS, E2E_DIR, REPO_ROOT, RELAY_URL, RUN_ID, startOwnRelay } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const OUTPUT_DIR = join(REPO_ROOT, "test-output");
const WAIT_MS = 10_000;
/** How often the status page (src/status.html) fetches status.json. */
const STATUS_REFRESH_MS = 500;

/** Polls `condition` until it holds or `ms` pass; resolves to whether it held. */
async function until(condition, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (condition()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Serves exactly the two files the page needs (everything else is 404) and, when `proxyTo`
 * is given, passes /socket.io/ (HTTP and WebSocket upgrades) on to the relay, so the page can
 * also reach the relay on its own origin.
 */
function startStaticServer({ proxyTo } = {}) {
  const files = {
    "/kiosk.html": [join(REPO_ROOT, "examples/kiosk.html"), "text/html; charset=utf-8"],
    "/socket.io.min.js": [
      join(E2E_DIR, "node_modules/socket.io-client/dist/socket.io.min.js"),
      "text/javascript; charset=utf-8",
    ],
  };
  const relay = proxyTo ? new URL(proxyTo) : null;
  const requests = [];
  const tunnels = new Set();
  const server = http.createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (relay && path.startsWith("/socket.io/")) {
      const upstream = http.request(
        { host: relay.hostname, port: relay.port, method: req.method, path: req.url, headers: req.headers },
        (answer) => {
          res.writeHead(answer.statusCode, answer.headers);
          answer.pipe(res);
        },
      );
      upstream.on("error", () => res.headersSent ? res.destroy() : res.writeHead(502).end());
      req.pipe(upstream);
      return;
    }
    requests.push(`${req.method} ${path}`);
    const file = files[path];
    if (req.method === "GET" && file) {
      res.writeHead(200, { "content-type": file[1], "cache-control": "no-store" });
      res.end(readFileSync(file[0]));
    } else if (path === "/favicon.ico") {
      res.writeHead(204).end(); // not part of the page; keeps the console free of a 404
    } else {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    }
  });
  server.on("upgrade", (req, client, head) => {
    if (!relay || !req.url.startsWith("/socket.io/")) return client.destroy();
    const upstream = net.connect(Number(relay.port), relay.hostname, () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(`${raw}\r\n`);
      if (head.length) upstream.write(head);
      client.pipe(upstream).pipe(client);
    });
    tunnels.add(client).add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    upstream.on("error", end).on("close", end);
    client.on("error", end).on("close", end);
  });
  const close = () =>
    new Promise((resolve) => {
      tunnels.forEach((s) => s.destroy());
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve({ port: server.address().port, requests, close }));
  });
}

let browser;
const sites = [];

before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 30_000 });
});

after(async () => {
  await browser?.close();
  await Promise.all(sites.map((s) => s.close()));
});

/**
 * Opens kiosk.html?relay=<relay for the page> and checks that a create, an update, a resume
 * after a missed update, and a delete of a screen show on the page, without console errors.
 */
async function kioskScenario(t, { site, relayForPage, screenshot }) {
  const page = await browser.newPage({ viewport: { width: 800, height: 450 } });
  const problems = [];
  const received = []; // what the relay sent the page, on either transport
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`console error: ${msg.text()}`);
  });
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("requestfailed", (req) => problems.push(`request failed: ${req.url()} (${req.failure()?.errorText})`));
  page.on("websocket", (ws) => ws.on("framereceived", (f) => received.push(String(f.payload))));
  page.on("response", async (res) => {
    if (res.url().includes("transport=polling") && res.request().method() === "GET") {
      received.push(await res.text().catch(() => ""));
    }
  });
  const dump = async () =>
    `status=${JSON.stringify(await page.locator("#status").textContent())} items=${JSON.stringify(
      await page.locator("#screens li").allTextContents(),
    )} problems=${JSON.stringify(problems.slice(0, 4))}`;
  const shoot = async (name) => {
    mkdirSync(OUTPUT_DIR, { recursive: true });
    const path = join(OUTPUT_DIR, name);
    await page.screenshot({ path, fullPage: true });
    t.diagnostic(`screenshot: ${path}`);
  };

  try {
    const url = `http://127.0.0.1:${site.port}/kiosk.html?relay=${relayForPage}`;
    t.diagnostic(`opening ${url}`);
    await page.goto(url, { waitUntil: "load" });

    // relay.status arrived: the page says "live since <time>".
    await page
      .locator("#status")
      .filter({ hasText: /^live since \d{4}-/ })
      .waitFor({ timeout: WAIT_MS })
      .catch(async (e) => {
        await shoot(screenshot.replace(/\.png$/, "-failed.png")).catch(() => {});
        assert.fail(`the page never showed the relay status: ${await dump()}\n${e.message.split("\n")[0]}`);
      });

    const key = 700_000 + Math.floor(Math.random() * 100_000);
    const names = ["lobby", "foyer", "atrium"].map((n) => `E2E ${n} ${RUN_ID}`);
    const item = (text) => page.locator("#screens li", { hasText: text });
    const shows = (text, what) =>
      item(text)
        .waitFor({ timeout: WAIT_MS })
        .catch(async () => assert.fail(`${what}: "${text}" not shown: ${await dump()}`));

    await accept({ event: "screens.items.create", payload: { name: names[0], status: "draft" }, key, collection: "screens" });
    await shows(names[0], "created screen");

    await accept({ event: "screens.items.update", payload: { name: names[1] }, keys: [key], collection: "screens" });
    await shows(names[1], "updated screen");
    assert.equal(await item(names[0]).count(), 0, `the old name is gone: ${await dump()}`);
    assert.equal(await item(names[1]).count(), 1, `the screen is listed once: ${await dump()}`);
    await shoot(screenshot);

    // Offline while the screen is renamed again: on reconnect the page resumes (a replay).
    await page.evaluate(() => socket.disconnect()); // the page's own socket (a global)
    await accept({ event: "screens.items.update", payload: { name: names[2] }, keys: [key], collection: "screens" });
    await page.waitForTimeout(300);
    assert.equal(await item(names[2]).count(), 0, "nothing arrives while disconnected");
    received.length = 0;
    await page.evaluate(() => socket.connect());
    await shows(names[2], "screen renamed while the page was offline");
    assert.equal(await item(names[1]).count(), 0, `the old name is gone: ${await dump()}`);
    // A polling response is recorded only once its body has been read (a second round trip
    // to the browser), possibly after the page has already shown the change: wait for it.
    const replayed = await until(() => received.some((frame) => frame.includes('"mode":"replay"')));
    assert.ok(replayed, `the page resumed with a replay, not a snapshot: ${received.join(" | ").slice(0, 600)}`);

    await accept({ event: "screens.items.delete", payload: [String(key)], keys: [String(key)], collection: "screens" });
    await item(names[2])
      .waitFor({ state: "detached", timeout: WAIT_MS })
      .catch(async () => assert.fail(`deleted screen still shown: ${await dump()}`));

    assert.deepEqual(problems, [], "no console errors, page errors or failed requests");
    assert.deepEqual(
      site.requests.filter((r) => !r.endsWith("/favicon.ico")),
      ["GET /kiosk.html", "GET /socket.io.min.js"],
      "the page loaded its two files from the static server",
    );
  } finally {
    await page.close();
  }
}

// As deployed: the page on its own web server, the relay on another origin (?relay=<relay>).
test(
  "kiosk.html on its own origin shows, changes, resumes and removes a screen from the relay",
  { timeout: 60_000 },
  async (t) => {
    const site = await startStaticServer();
    sites.push(site);
    await kioskScenario(t, { site, relayForPage: RELAY_URL, screenshot: "kiosk-cross-origin.png" });
  },
);

// The same page reaching the relay through its own origin (the static server passes
// /socket.io/ on), which needs no CORS: checks the page itself, whatever the origin question.
test(
  "kiosk.html reaching the relay through its own origin shows, changes, resumes and removes a screen",
  { timeout: 60_000 },
  async (t) => {
    const site = await startStaticServer({ proxyTo: RELAY_URL });
    sites.push(site);
    await kioskScenario(t, { site, relayForPage: `http://127.0.0.1:${site.port}`, screenshot: "kiosk.png" });
  },
);

// The page fetches status.json every STATUS_REFRESH_MS, so a change can wait that long before
// the fetch that carries it even starts; the rest of the budget covers the fetch and the render.
test("the status page shows a change within its refresh and 2.5 s of its webhook, without console errors", { timeout: 60_000 }, async (t) => {
  const page = await browser.newPage({ viewport: { width: 430, height: 932 } }); // a phone
  const problems = [];
  page.on("console", (msg) => msg.type() === "error" && problems.push(`console error: ${msg.text()}`));
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("requestfailed", (req) => problems.push(`request failed: ${req.url()} (${req.failure()?.errorText})`));
  try {
    await page.goto(`${RELAY_URL}/status`, { waitUntil: "load" });
    await page.locator("#upstream", { hasText: "live" }).waitFor({ timeout: WAIT_MS });
    const key = `status-${RUN_ID}`;
    await accept({ event: "screens.items.create", payload: { name: "shown on the status page" }, key, collection: "screens" });
    const accepted = performance.now();
    await page.locator("#events tr", { hasText: key }).first().waitFor({ timeout: WAIT_MS });
    const shownAfter = performance.now() - accepted;
    t.diagnostic(`the change showed ${shownAfter.toFixed(0)} ms after the webhook was accepted`);
    const budget = STATUS_REFRESH_MS + 2_500;
    assert.ok(shownAfter < budget, `shown after ${shownAfter.toFixed(0)} ms (budget ${budget} ms)`);
    assert.match(await page.locator("#memory").textContent(), /MiB/);
    mkdirSync(OUTPUT_DIR, { recursive: true });
    const path = join(OUTPUT_DIR, "status-live.png");
    await page.screenshot({ path, fullPage: true });
    t.diagnostic(`screenshot: ${path}`);
    assert.deepEqual(problems, [], "no console errors, page errors or failed requests");
  } finally {
    await page.close();
  }
});

test("the demo kiosk at /demo shows a collection's create, update and delete live", { timeout: 60_000 }, async (t) => {
  const page = await browser.newPage({ viewport: { width: 800, height: 600 } });
  const problems = [];
  page.on("console", (msg) => msg.type() === "error" && problems.push(`console error: ${msg.text()}`));
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("requestfailed", (req) => problems.push(`request failed: ${req.url()} (${req.failure()?.errorText})`));
  try {
    await page.goto(`${RELAY_URL}/demo?collection=announcements`, { waitUntil: "load" });
    await page.locator("#status", { hasText: /^live since/ }).waitFor({ timeout: WAIT_MS });
    const key = `demo-${RUN_ID}`;
    const item = page.locator(`#items li[data-key="${key}"]`);
    await accept({ event: "announcements.items.create", payload: { title: "first" }, key, collection: "announcements" });
    await item.filter({ hasText: "first" }).waitFor({ timeout: WAIT_MS });
    await accept({ event: "announcements.items.update", payload: { title: "second" }, keys: [key], collection: "announcements" });
    await item.filter({ hasText: "second" }).waitFor({ timeout: WAIT_MS });
    mkdirSync(OUTPUT_DIR, { recursive: true });
    const path = join(OUTPUT_DIR, "demo.png");
    await page.screenshot({ path, fullPage: true });
    t.diagnostic(`screenshot: ${path}`);
    await accept({ event: "announcements.items.delete", payload: [key], keys: [key], collection: "announcements" });
    await item.waitFor({ state: "detached", timeout: WAIT_MS });
    assert.deepEqual(problems, [], "no console errors, page errors or failed requests");
  } finally {
    await page.close();
  }
});

/**
 * A stand-in for Directus that answers the few REST calls a relay in poll mode makes, with one
 * screen, and that can be taken down (503 to everything) and brought back.
 */
function startFakeDirectus() {
  let down = false;
  const server = http.createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const json = (status, body) => res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
    if (down) return json(503, { errors: [{ message: "Service Unavailable" }] });
    if (path === "/server/ping") return res.writeHead(200, { "content-type": "text/html" }).end("pong");
    if (path === "/server/info") return json(200, { data: { version: "12.4.0" } });
    if (path === "/activity") return json(200, { data: [] });
    if (path.startsWith("/collections/")) return json(200, { data: { meta: { accountability: "all" } } });
    if (path === "/items/screens") return json(200, { data: [{ id: 1, name: "Lobby" }] });
    json(404, { errors: [{ message: "Route doesn't exist." }] });
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () =>
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        setDown: (value) => { down = value; },
        close: () => new Promise((done) => { server.closeAllConnections(); server.close(() => done()); }),
      }),
    );
  });
}


test("the status page shows Directus live, offline with the content's time, and live again", { timeout: 90_000 }, async (t) => {
  const directus = await startFakeDirectus();
  const relay = await startOwnRelay(`clients.allow_anonymous = true
[directus]
url = "${directus.url}"
token = "status-page-test-token"
mode = "poll"
poll_interval = "200ms"
reconcile_interval = "1s"
request_timeout = "1s"
[[collections]]
name = "screens"
`);
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  const problems = [];
  page.on("console", (msg) => msg.type() === "error" && problems.push(`console error: ${msg.text()}`));
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  const shoot = async (name) => {
    mkdirSync(OUTPUT_DIR, { recursive: true });
    const path = join(OUTPUT_DIR, name);
    await page.screenshot({ path, fullPage: true });
    t.diagnostic(`screenshot: ${path}`);
  };
  try {
    await page.goto(`${relay.url}/status`, { waitUntil: "load" });
    const state = (text) => page.locator("#upstream", { hasText: new RegExp(`^${text}$`) }).waitFor({ timeout: 20_000 })
      .catch(() => assert.fail(`never ${text}; relay log:\n${relay.log().slice(-2000)}`));
    await state("live");
    await page.locator("#mirror tr", { hasText: "screens" }).waitFor({ timeout: WAIT_MS });
    await shoot("status-live-directus.png");
    directus.setDown(true);
    await state("offline");
    assert.match(await page.locator("#since").textContent(), /^content from /);
    await shoot("status-offline.png");
    directus.setDown(false);
    await state("live");
    await shoot("status-back.png");
    assert.deepEqual(problems, [], "no console errors or page errors");
  } finally {
    await page.close();
    await relay.stop();
    await directus.close();
  }
});
