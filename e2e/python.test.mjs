// The Python kiosk of docs/kiosk-protocol.md, run as written with python-socketio (run.sh
// installs it): it connects with a token, takes a snapshot, and shows a screen created,
// renamed and deleted by webhooks.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { test } from "node:test";
import { accept, REPO_ROOT, RELAY_URL, RUN_ID, SOON_MS } from "./helpers.mjs";

const PYTHON = process.env.E2E_PYTHON;
const LOBBY_TOKEN = process.env.E2E_LOBBY_TOKEN;
/** How long the kiosk may take to start, import its libraries and connect. */
const START_MS = 30_000;

/** The first ```python block after the heading "A kiosk in Python". */
function snippet() {
  const doc = readFileSync(join(REPO_ROOT, "docs/kiosk-protocol.md"), "utf8");
  const section = doc.slice(doc.indexOf("## A kiosk in Python"));
  const match = section.match(/```python\n([\s\S]*?)```/);
  assert.ok(match, "docs/kiosk-protocol.md has a python block under 'A kiosk in Python'");
  return match[1];
}

test("the Python kiosk from the protocol reference shows changes as they happen", { timeout: 60_000 }, async (t) => {
  assert.ok(PYTHON, "E2E_PYTHON is set by run.sh");
  const file = join(mkdtempSync(join(tmpdir(), "kiosk-py-")), "kiosk.py");
  writeFileSync(file, snippet());
  const child = spawn(PYTHON, [file], {
    env: { ...process.env, RELAY_URL, KIOSK_TOKEN: LOBBY_TOKEN },
    stdio: ["ignore", "pipe", "pipe"],
  });
  t.after(() => child.kill("SIGKILL"));
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const lines = [];
  let wake = () => {};
  createInterface({ input: child.stdout }).on("line", (line) => {
    lines.push(line);
    wake();
  });
  /** Waits up to `ms` for a printed line that satisfies `wanted`, returning it. */
  const waitFor = async (what, wanted, ms = SOON_MS) => {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = lines.find(wanted);
      if (found) return found;
      const left = deadline - Date.now();
      if (left <= 0 || child.exitCode !== null) {
        assert.fail(`the Python kiosk did not print ${what}; it printed:\n${lines.join("\n")}\nstderr:\n${stderr}`);
      }
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  };

  // The first line also waits for Python to start, import socketio and aiohttp (from a cold
  // cache on a busy machine) and connect, so it gets longer than what should happen at once.
  await waitFor("the relay's status", (l) => l.startsWith("upstream live since "), START_MS);
  await waitFor("its snapshot", (l) => l.startsWith("screens: "));
  const key = `py-${RUN_ID}`;
  const name = `Python ${RUN_ID}`;
  await accept({ event: "screens.items.create", collection: "screens", key, payload: { name } });
  await waitFor("the created screen", (l) => l.startsWith("screens: ") && l.includes(`'${name}'`));
  await accept({ event: "screens.items.update", collection: "screens", keys: [key], payload: { name: `${name} renamed` } });
  await waitFor("the renamed screen", (l) => l.includes(`'${name} renamed'`));
  lines.length = 0;
  await accept({ event: "screens.items.delete", collection: "screens", keys: [key] });
  const last = await waitFor("the screen gone", (l) => l.startsWith("screens: "));
  assert.ok(!last.includes(name), last);
  assert.equal(stderr, "", "the kiosk printed no errors");
});
