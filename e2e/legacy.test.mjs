// Legacy kiosks: the real socket.io-client 2.5 (Engine.IO 3), as old signage players run it,
// on WebSocket and on long-polling. They connect (tokens in the query, since 2.x has no
// handshake auth), subscribe, resume, reach a collection's own namespace, and receive the very
// events a socket.io-client 4 kiosk receives.

import assert from "node:assert/strict";
import { test } from "node:test";
import { accept, closing, Kiosk, RUN_ID } from "./helpers.mjs";

const LOBBY_TOKEN = process.env.E2E_LOBBY_TOKEN;
const TEST_TIMEOUT = 30_000;

for (const transport of ["websocket", "polling"]) {
  test(`on ${transport}, a socket.io-client 2 kiosk receives what a socket.io-client 4 kiosk does`, { timeout: TEST_TIMEOUT }, async (t) => {
    const legacy = closing(t, new Kiosk(transport, `v2/${transport}`, undefined, { legacy: true }));
    const modern = closing(t, new Kiosk(transport, `v4/${transport}`));
    const status = await legacy.open();
    assert.equal(legacy.transportName, transport);
    assert.equal(legacy.socket.io.engine.transport.query.EIO, 3, "Engine.IO 3");
    assert.equal(status.upstream, "live");
    await modern.open();
    for (const kiosk of [legacy, modern]) {
      const { ack } = await kiosk.subscribe({ collections: ["screens"] });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      assert.equal(ack.collections.screens.mode, "snapshot");
    }
    const key = `legacy-${transport}-${RUN_ID}`;
    await accept({ event: "screens.items.create", collection: "screens", key, payload: { name: "Hall" } });
    await accept({ event: "screens.items.update", collection: "screens", keys: [key], payload: { name: "Hall 2" } });
    await accept({ event: "screens.items.delete", collection: "screens", keys: [key] });
    const got = await legacy.take(4);
    const expected = await modern.take(4);
    assert.deepEqual(got.map((e) => e.name), ["data.create", "data.update", "data.pre-delete", "data.delete"]);
    assert.deepEqual(got.map((e) => e.body), expected.map((e) => e.body), "the same bodies");

    // A resume from the first of those events replays the other three.
    const since = { epoch: status.epoch, seq: got[0].body.seq };
    const again = closing(t, new Kiosk(transport, `v2-resume/${transport}`, undefined, { legacy: true }));
    await again.open();
    const { ack } = await again.subscribe({ collections: ["screens"], since });
    assert.deepEqual(ack.collections.screens, { mode: "replay", events: 3 });
    assert.deepEqual((await again.take(3)).map((e) => e.body), expected.slice(1).map((e) => e.body));
  });

  test(`on ${transport}, a socket.io-client 2 kiosk passes its token in the query`, { timeout: TEST_TIMEOUT }, async (t) => {
    const wrong = closing(t, new Kiosk(transport, `v2-wrong/${transport}`, { token: "not-the-token-0123456789" }, { legacy: true }));
    await assert.rejects(wrong.connect(), /connect_error: the kiosk token is not valid/);
    const lobby = closing(t, new Kiosk(transport, `v2-lobby/${transport}`, { token: LOBBY_TOKEN }, { legacy: true }));
    await lobby.open();
    const { ack } = await lobby.subscribe({ collections: ["announcements"] });
    assert.equal(ack.ok, false);
    assert.match(ack.error, /\(lobby\) may not read "announcements"/);
  });

  test(`on ${transport}, a socket.io-client 2 kiosk reaches a collection's own namespace`, { timeout: TEST_TIMEOUT }, async (t) => {
    const menu = closing(t, new Kiosk(transport, `v2-menu/${transport}`, undefined, { legacy: true, namespace: "/menu" }));
    await menu.open();
    const key = `v2-dish-${transport}-${RUN_ID}`;
    await accept({ event: "menu.items.create", collection: "menu", key, payload: { title: "Tea", price: 2 } });
    const event = await menu.next();
    assert.deepEqual([event.name, event.body.record], ["menu:create", { id: key, title: "Tea" }]);
  });
}
