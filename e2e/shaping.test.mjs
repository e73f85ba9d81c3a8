// Events shaped per collection, through the real socket.io-client 4 on both transports (the
// config is in run.sh): `menu` is renamed ({collection}:{action}, update as menu:changed, no
// pre-delete), served on the namespace /menu, and projected to title and image.url without
// the payload; `tickers` is compact.

import assert from "node:assert/strict";
import { test } from "node:test";
import { accept, closing, Kiosk, RUN_ID } from "./helpers.mjs";

const TEST_TIMEOUT = 30_000;

for (const transport of ["websocket", "polling"]) {
  test(`on ${transport}, /menu gets renamed, projected events that agree with its snapshot`, { timeout: TEST_TIMEOUT }, async (t) => {
    const key = `dish-${transport}-${RUN_ID}`;
    const full = { title: "Soup", price: 4, secret: "kitchen only", image: { url: "/soup.png", size: 9 } };
    await accept({ event: "menu.items.create", collection: "menu", key, payload: full });

    const menu = closing(t, new Kiosk(transport, `menu/${transport}`, undefined, { namespace: "/menu" }));
    const root = closing(t, new Kiosk(transport, `root/${transport}`));
    await menu.open();
    await root.open();
    assert.equal(menu.transportName, transport);
    const { ack } = await menu.subscribe({ collections: ["menu"] });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    const projected = { id: key, title: "Soup", image: { url: "/soup.png" } };
    const item = ack.collections.menu.items.find((i) => i.id === key);
    assert.deepEqual(item, projected, "the snapshot carries only the emitted fields");

    await accept({ event: "menu.items.update", collection: "menu", keys: [key], payload: { price: 5, title: "Stew" } });
    await accept({ event: "menu.items.delete", collection: "menu", keys: [key] });
    const [changed, deleted] = await menu.take(2);
    assert.equal(changed.name, "menu:changed");
    assert.deepEqual(changed.body.records, [{ ...projected, title: "Stew" }], "events carry the fields the snapshot does");
    assert.equal(changed.body.action, "update");
    assert.equal(changed.body.payload, undefined, "emit_payload = false");
    assert.deepEqual([deleted.name, deleted.body.action, deleted.body.keys], ["menu:delete", "delete", [key]]);
    await menu.none(undefined, "(no menu:pre-delete)");
    await root.none(undefined, "(menu events stay on /menu)");

    // `/` does not serve menu: the error names the namespace that does.
    const { ack: refused } = await root.subscribe({ collections: ["menu"] });
    assert.equal(refused.ok, false);
    assert.match(refused.error, /served on the namespace "\/menu"/);
  });

  test(`on ${transport}, compact events and snapshots carry keys only`, { timeout: TEST_TIMEOUT }, async (t) => {
    const key = `tick-${transport}-${RUN_ID}`;
    await accept({ event: "tickers.items.create", collection: "tickers", key, payload: { text: "Open" } });
    const kiosk = closing(t, new Kiosk(transport, `tickers/${transport}`, undefined));
    await kiosk.open();
    const { ack } = await kiosk.subscribe({ collections: ["tickers"] });
    assert.equal(ack.collections.tickers.mode, "snapshot");
    assert.ok(ack.collections.tickers.keys.includes(key), JSON.stringify(ack));
    assert.equal(ack.collections.tickers.items, undefined);
    await accept({ event: "tickers.items.update", collection: "tickers", keys: [key], payload: { text: "Closed" } });
    const event = await kiosk.next();
    assert.equal(event.name, "data.update");
    assert.deepEqual(event.body, { collection: "tickers", keys: [key], seq: event.body.seq });
  });
}
