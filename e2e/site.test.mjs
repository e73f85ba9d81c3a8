// The offline site in headless Chromium: the kiosk page of examples/site/index.html, served by
// a relay of the test's own from its [site] folder, loading /socket.io/socket.io.min.js and
// /relay-client.js from the relay and nothing from anywhere else. It shows a webhook's change
// live, comes back by itself after the relay restarts (resuming with a replay), and loads
// again from the relay on a reload.

import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, REPO_ROOT, RUN_ID, startOwnRelay } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const OUTPUT_DIR = join(REPO_ROOT, "test-output");
const WAIT_MS = 15_000;

let browser;
before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
});
after(async () => {
  await browser?.close();
});

test("a kiosk page from [site] built on relay-client.js shows changes live and survives a relay restart", { timeout: 120_000 }, async (t) => {
  const secret = `site-secret-${RUN_ID}-0123456789`;
  const token = `site-token-${RUN_ID}-0123456789`;
  const toml = `shutdown_grace = "2s"
[webhook]
secret = "${secret}"
[[collections]]
name = "screens"
[[clients.tokens]]
name = "lobby"
token = "${token}"
collections = ["screens"]
`;
  const dir = mkdtempSync(join(tmpdir(), "relay-site-"));
  mkdirSync(join(dir, "site"));
  copyFileSync(join(REPO_ROOT, "examples/site/index.html"), join(dir, "site/index.html"));
  let relay = await startOwnRelay(toml, { dir, secret });
  t.after(() => relay.stop());
  const origin = relay.url;
  await relay.post({ event: "screens.items.create", payload: { name: "Lobby" }, key: 1, collection: "screens" });

  const page = await browser.newPage({ viewport: { width: 800, height: 450 } });
  t.after(() => page.close());
  const requests = [];
  const problems = [];
  const frames = [];
  let restarting = false;
  page.on("request", (req) => requests.push(req.url()));
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    // While the relay is down, Chromium logs the refused reconnects: expected then only.
    if (msg.type() === "error" && !restarting) problems.push(`console error: ${msg.text()}`);
  });
  page.on("websocket", (ws) => ws.on("framereceived", (f) => frames.push(String(f.payload))));
  page.on("response", async (res) => {
    if (res.url().includes("transport=polling") && res.request().method() === "GET") frames.push(await res.text().catch(() => ""));
  });
  const status = page.locator("#status");
  const item = (text) => page.locator("#screens li", { hasText: text });
  const dump = async () =>
    `status=${JSON.stringify(await status.textContent())} items=${JSON.stringify(await page.locator("#screens li").allTextContents())} problems=${JSON.stringify(problems)}`;
  const shows = (text, what) => item(text).waitFor({ timeout: WAIT_MS }).catch(async () => assert.fail(`${what}: "${text}" not shown: ${await dump()}`));
  const shoot = async (name) => {
    mkdirSync(OUTPUT_DIR, { recursive: true });
    await page.screenshot({ path: join(OUTPUT_DIR, name), fullPage: true });
    t.diagnostic(`screenshot: ${join(OUTPUT_DIR, name)}`);
  };

  await page.goto(`${origin}/app/?token=${token}&device=lobby-1`, { waitUntil: "load" });
  await status.filter({ hasText: /^live$/ }).waitFor({ timeout: WAIT_MS }).catch(async () => assert.fail(`never live: ${await dump()}`));
  await shows("Lobby", "the snapshot");

  await relay.post({ event: "screens.items.update", payload: { name: "Main lobby" }, keys: ["1"], collection: "screens" });
  await shows("Main lobby", "a live update");
  assert.equal(await item("Lobby").count(), 1, `the screen is listed once: ${await dump()}`);
  await shoot("site-kiosk.png");

  // The relay restarts (a clean stop keeps its epoch): the page reconnects by itself and
  // resumes with since, getting a replay, not a snapshot.
  restarting = true;
  assert.equal(await relay.stop(), 0, "the relay stopped cleanly");
  await status.filter({ hasText: "reconnecting" }).waitFor({ timeout: WAIT_MS }).catch(async () => assert.fail(`the page did not notice: ${await dump()}`));
  frames.length = 0;
  relay = await startOwnRelay(toml, { dir, port: relay.port, secret });
  const resumed = await page
    .waitForFunction(() => document.getElementById("status").textContent === "live", null, { timeout: 30_000 })
    .then(() => true, () => false);
  assert.ok(resumed, `the page came back after the restart: ${await dump()}`);
  restarting = false;
  await relay.post({ event: "screens.items.update", payload: { name: "Lobby after restart" }, keys: ["1"], collection: "screens" });
  await shows("Lobby after restart", "an update after the restart");
  assert.ok(frames.some((f) => f.includes('"mode":"replay"')), `the page resumed with a replay: ${frames.join(" | ").slice(0, 600)}`);
  assert.ok(!frames.some((f) => f.includes('"mode":"snapshot"')), "no snapshot after a clean restart");

  // A reboot of the screen: the page, both scripts and the content come from the relay.
  await page.reload({ waitUntil: "load" });
  await shows("Lobby after restart", "after a reload");
  await status.filter({ hasText: /^live$/ }).waitFor({ timeout: WAIT_MS });
  await shoot("site-kiosk-reloaded.png");

  assert.deepEqual(problems, [], "no page errors, and no console errors outside the restart");
  const elsewhere = requests.filter((url) => !url.startsWith(`${origin}/`) && !url.startsWith("data:"));
  assert.deepEqual(elsewhere, [], "every request went to the relay");
  for (const path of ["/app/", "/socket.io/socket.io.min.js", "/relay-client.js"]) {
    assert.ok(requests.some((url) => new URL(url).pathname === path), `the page loaded ${path} from the relay: ${requests.join(" ")}`);
  }
});
