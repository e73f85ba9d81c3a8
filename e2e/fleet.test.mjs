// Screens as a fleet with the real socket.io-client 4: three screens that name their device,
// commands acknowledged by them (one screen, then all), one that goes dark reported missing
// after clients.missing_after, and the admin token required to act.

import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { chromium } from "playwright-core";
import { io } from "socket.io-client";
import { REPO_ROOT, report, sleep, startOwnRelay } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const OUTPUT_DIR = join(REPO_ROOT, "test-output");

const SECRET = "fleet-secret-0123456789";
const ADMIN = "fleet-admin-0123456789abcdef";
const TOKEN = "fleet-screens-0123456789";
const PATIENCE_MS = 20_000;

const CONFIG = `[webhook]
secret = "${SECRET}"
[[collections]]
name = "screens"
[admin]
token = "${ADMIN}"
[clients]
missing_after = "2s"
[[clients.tokens]]
name = "screens"
token = "${TOKEN}"
collections = ["screens"]
devices = ["lobby-*", "hall"]
`;

/** A screen as a page built on socket.io-client does it: it acknowledges every command. */
function screen(url, device, name) {
  const socket = io(url, { forceNew: true, reconnection: false, auth: { token: TOKEN, device, name } });
  socket.commands = [];
  socket.on("relay.command", (command, ack) => {
    socket.commands.push(command);
    ack({ ok: true });
  });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (e) => reject(new Error(`${device}: ${e.message}`)));
  });
}

async function api(url, path, { method = "GET", token = ADMIN, body } = {}) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
}

test("three named screens take commands, and the one that goes dark is reported missing", { timeout: 90_000 }, async (t) => {
  const relay = await startOwnRelay(CONFIG, { secret: SECRET });
  t.after(() => relay.stop());
  const left = await screen(relay.url, "lobby-left", "Lobby, left");
  const right = await screen(relay.url, "lobby-right", "Lobby, right");
  const hall = await screen(relay.url, "hall", "Hall");
  t.after(() => [left, right, hall].forEach((s) => s.disconnect()));

  const refused = await screen(relay.url, "office-1").then(() => null, (e) => e.message);
  assert.match(refused ?? "", /may not be used by this device/);

  const listed = await api(relay.url, "/api/screens");
  assert.equal(listed.status, 200);
  assert.equal(listed.body.online, 3);
  assert.deepEqual(listed.body.screens.map((s) => s.device), ["hall", "lobby-left", "lobby-right"]);
  assert.equal(listed.body.screens[1].name, "Lobby, left");

  const noToken = await api(relay.url, "/api/screens/hall/commands", { method: "POST", token: null, body: { command: "reload" } });
  assert.equal(noToken.status, 401);
  const kioskToken = await api(relay.url, "/api/screens/hall/commands", { method: "POST", token: TOKEN, body: { command: "reload" } });
  assert.equal(kioskToken.status, 401, "a kiosk token does not act");

  const one = await api(relay.url, "/api/screens/lobby-left/commands", { method: "POST", body: { command: "reload", args: { why: "new menu" } } });
  assert.equal(one.status, 202, JSON.stringify(one.body));
  assert.equal(one.body.acked, true, "the screen acknowledged");
  assert.equal(left.commands.length, 1);
  assert.equal(left.commands[0].command, "reload");
  assert.deepEqual(left.commands[0].args, { why: "new menu" });
  assert.equal(right.commands.length, 0, "only the screen named");

  const all = await api(relay.url, "/api/commands", { method: "POST", body: { command: "identify", all: true } });
  assert.equal(all.status, 202, JSON.stringify(all.body));
  assert.equal(all.body.screens, 3);
  assert.equal(all.body.acked, 3);
  for (const s of [left, right, hall]) assert.equal(s.commands.at(-1).command, "identify");

  const started = performance.now();
  hall.disconnect();
  let hallState;
  while (performance.now() - started < PATIENCE_MS) {
    const now = await api(relay.url, "/api/screens");
    hallState = now.body.screens.find((s) => s.device === "hall");
    if (hallState.state === "missing") break;
    await sleep(200);
  }
  assert.equal(hallState.state, "missing", JSON.stringify(hallState));
  const status = await api(relay.url, "/status.json");
  assert.equal(status.body.fleet.missing, 1);
  assert.equal(status.body.fleet.screens[0].device, "hall", "missing screens come first");
  const gone = await api(relay.url, "/api/screens/hall/commands", { method: "POST", body: { command: "reload" } });
  assert.equal(gone.status, 409);
  const metrics = await (await fetch(`${relay.url}/metrics`)).text();
  assert.match(metrics, /relay_screens\{state="missing"\} 1/);
  assert.match(metrics, /relay_screen_commands_total\{reason="acked"\} 4/);
  report(t, `missing reported ${Math.round(performance.now() - started)} ms after the screen closed (missing_after 2 s)`);
});

test("the status page on a phone lists the screens, says which is missing, and its buttons reach a screen", { timeout: 90_000 }, async (t) => {
  const relay = await startOwnRelay(CONFIG, { secret: SECRET });
  t.after(() => relay.stop());
  const left = await screen(relay.url, "lobby-left", "Lobby <b>left</b>");
  const hall = await screen(relay.url, "hall", "Hall");
  t.after(() => [left, hall].forEach((s) => s.disconnect()));
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 430, height: 932 } });
  const shoot = async (name) => {
    mkdirSync(OUTPUT_DIR, { recursive: true });
    const path = join(OUTPUT_DIR, name);
    await page.screenshot({ path, fullPage: true });
    t.diagnostic(`screenshot: ${path}`);
  };
  await page.goto(`${relay.url}/status#token=${ADMIN}`);
  const rows = page.locator("#screens tr");
  await page.waitForFunction(() => document.querySelectorAll("#screens tr").length === 2, null, { timeout: PATIENCE_MS });
  assert.match(await rows.nth(1).innerText(), /Lobby <b>left<\/b> \(lobby-left\)/, "the name is shown as text");
  assert.equal(await page.locator("#screens b").count(), 0, "nothing from a screen's handshake becomes markup");
  assert.match(await page.locator("#fleet-counts").innerText(), /2 online, 0 away, 0 missing/);

  await rows.nth(1).getByRole("button", { name: "identify" }).click();
  await page.waitForFunction(() => /acknowledged/.test(document.querySelector("#command-result").textContent), null, { timeout: PATIENCE_MS });
  assert.equal(left.commands.at(-1).command, "identify");
  assert.equal(hall.commands.length, 0);
  await shoot("fleet-status.png");

  hall.disconnect();
  await page.waitForFunction(() => /Missing/.test(document.querySelector("#missing").textContent), null, { timeout: PATIENCE_MS });
  assert.match(await page.locator("#missing").innerText(), /Hall since/);
  assert.match(await rows.nth(0).innerText(), /^Hall \(hall\)[\s\S]*missing, last seen/, "missing screens come first");
  assert.equal(await rows.nth(0).getByRole("button", { name: "reload" }).isDisabled(), true, "no command to a screen that is away");
  await shoot("fleet-status-missing.png");
});

test("the example kiosk page built on relay-client.js identifies itself and reloads when told", { timeout: 120_000 }, async (t) => {
  const token = TOKEN;
  const dir = mkdtempSync(join(tmpdir(), "relay-fleet-site-"));
  mkdirSync(join(dir, "site"));
  copyFileSync(join(REPO_ROOT, "examples/site/index.html"), join(dir, "site/index.html"));
  const relay = await startOwnRelay(CONFIG, { dir, secret: SECRET });
  t.after(() => relay.stop());
  await relay.post({ event: "screens.items.create", collection: "screens", key: "1", payload: { id: 1, name: "Welcome" } });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 800, height: 450 } });
  let loads = 0;
  page.on("load", () => (loads += 1));
  await page.goto(`${relay.url}/app/?token=${token}&device=lobby-left`);
  await page.waitForFunction(() => /Welcome/.test(document.querySelector("#screens").textContent), null, { timeout: PATIENCE_MS });
  const command = (body) => api(relay.url, "/api/screens/lobby-left/commands", { method: "POST", body });

  const identify = await command({ command: "identify", args: { seconds: 30 } });
  assert.equal(identify.body.acked, true, JSON.stringify(identify.body));
  await page.waitForSelector("#relay-identify", { timeout: PATIENCE_MS });
  assert.equal(await page.locator("#relay-identify").innerText(), "lobby-left");
  mkdirSync(OUTPUT_DIR, { recursive: true });
  await page.screenshot({ path: join(OUTPUT_DIR, "fleet-identify.png") });
  t.diagnostic(`screenshot: ${join(OUTPUT_DIR, "fleet-identify.png")}`);

  const before = loads;
  const reload = await command({ command: "reload" });
  assert.equal(reload.body.acked, true, JSON.stringify(reload.body));
  const deadline = Date.now() + PATIENCE_MS;
  while (loads === before && Date.now() < deadline) await sleep(100);
  assert.equal(loads, before + 1, "the page reloaded once");
  await page.waitForFunction(() => /Welcome/.test(document.querySelector("#screens").textContent), null, { timeout: PATIENCE_MS });
  assert.equal(await page.locator("#relay-identify").count(), 0, "a reloaded page starts without the overlay");
  const listed = await api(relay.url, "/api/screens");
  assert.equal(listed.body.screens[0].connects_last_hour, 2, "the reload is a second connect of the same screen");
});
