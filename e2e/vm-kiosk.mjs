// What a kiosk sees of a relay, for release/vm-test.sh: one socket.io-client kiosk connects with
// a token, subscribes to a collection without `since` (so the ack holds a snapshot) and prints
// one line of JSON, {"epoch", "seq", "keys"}: the relay's epoch and seq from the ack, and the keys
// of the snapshot's items, sorted. Exits 1 with a message when that fails within --timeout s.
//
//   node e2e/vm-kiosk.mjs --url http://127.0.0.1:8080 --token TOKEN --collection screens

import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const { values: opt } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string" },
    collection: { type: "string" },
    timeout: { type: "string", default: "30" },
  },
});
const fail = (message) => {
  console.error(`kiosk: ${message}`);
  process.exit(1);
};
for (const name of ["url", "token", "collection"]) {
  if (!opt[name]) fail(`--${name} is required`);
}
setTimeout(() => fail(`no answer within ${opt.timeout} s`), Number(opt.timeout) * 1000).unref();

const socket = io(opt.url, {
  transports: ["websocket"],
  reconnection: false,
  forceNew: true,
  rejectUnauthorized: false,
  auth: { token: opt.token, collections: [opt.collection] },
});
socket.on("connect_error", (e) => fail(`connect_error: ${e.message}`));
socket.on("connect", () => {
  socket.emit("subscribe", { collections: [opt.collection] }, (ack) => {
    const answer = ack?.collections?.[opt.collection];
    if (!ack?.ok || answer?.mode !== "snapshot") fail(`subscribe answered ${JSON.stringify(ack)}`);
    const keys = answer.items.map((item) => String(item.id)).sort();
    console.log(JSON.stringify({ epoch: ack.epoch, seq: ack.seq, keys }));
    socket.disconnect();
    process.exit(0);
  });
});
