// Kiosk access and routed rooms through the real socket.io-client, on both transports: a
// wrong token is refused with a reason, a token reads only its collections, and a routed
// room hears that an item left it.

import assert from "node:assert/strict";
import { test } from "node:test";
import { accept, Kiosk, RUN_ID } from "./helpers.mjs";

const LOBBY_TOKEN = process.env.E2E_LOBBY_TOKEN;
const TEST_TIMEOUT = 30_000;

for (const transport of ["websocket", "polling"]) {
  test(`on ${transport}, a wrong token gets a connect_error that says why`, { timeout: TEST_TIMEOUT }, async () => {
    const kiosk = new Kiosk(transport, `wrong-token/${transport}`, { token: "not-the-token-0123456789" });
    await assert.rejects(kiosk.connect(), /connect_error: the kiosk token is not valid/);
    kiosk.close();
  });

  test(`on ${transport}, a token reads only its collections`, { timeout: TEST_TIMEOUT }, async () => {
    const lobby = new Kiosk(transport, `lobby/${transport}`, { token: LOBBY_TOKEN });
    await lobby.open();
    const key = `acc-${transport}-${RUN_ID}`;
    await accept({ event: "announcements.items.create", collection: "announcements", key, payload: { title: "no" } });
    await accept({ event: "screens.items.create", collection: "screens", key, payload: { name: "yes" } });
    const first = await lobby.next();
    assert.equal(first.name, "data.create");
    assert.equal(first.body.collection, "screens", "the announcement never reaches the lobby token");
    const { ack } = await lobby.subscribe({ collections: ["announcements"] });
    assert.equal(ack.ok, false);
    assert.match(ack.error, /\(lobby\) may not read "announcements"/);
    lobby.close();
  });
}

test("a routed room hears an item leave and another room hears it arrive", { timeout: TEST_TIMEOUT }, async () => {
  const screen = (n) => `scr-${n}-${RUN_ID}`;
  const [one, two] = [new Kiosk("websocket", "room-1"), new Kiosk("polling", "room-2")];
  for (const [kiosk, n] of [[one, 1], [two, 2]]) {
    await kiosk.open();
    const { ack } = await kiosk.subscribe({ collections: [{ collection: "notices", where: { screen: screen(n) } }] });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(ack.rooms[0].mode, "snapshot");
  }
  const key = `moving-${RUN_ID}`;
  await accept({ event: "notices.items.create", collection: "notices", key, payload: { screen: screen(1) } });
  const created = await one.next();
  assert.deepEqual([created.name, created.body.keys], ["data.create", [key]]);
  await accept({ event: "notices.items.update", collection: "notices", keys: [key], payload: { screen: screen(2) } });
  const left = await one.next();
  assert.deepEqual([left.name, left.body.keys, left.body.where], ["data.delete", [key], { screen: screen(1) }]);
  const arrived = await two.next();
  assert.deepEqual([arrived.name, arrived.body.record.screen], ["data.create", screen(2)]);
  await one.none();
  one.close();
  two.close();
});
