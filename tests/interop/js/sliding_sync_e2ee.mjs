// An encrypted DM where one side syncs with simplified sliding sync (MSC4186): Alice
// runs matrix-js-sdk 43 with its Rust crypto on `SlidingSync` (room keys arrive through
// the to_device extension, Bob's devices through the e2ee extension's device_lists),
// Bob on the classic /v3/sync. Each must decrypt the other's message.
//
// Usage: node sliding_sync_e2ee.mjs <base_url> <suffix>. Prints one JSON line of
// results; exits non-zero (with the failing step) on failure. Every wait is bounded.
import * as sdk from "matrix-js-sdk";
import { SlidingSync } from "matrix-js-sdk/lib/sliding-sync.js";

const [baseUrl, suffix] = process.argv.slice(2);
if (!baseUrl || !suffix) throw new Error("usage: node sliding_sync_e2ee.mjs <base_url> <suffix>");
const DEADLINE_MS = 60000;
let step = "start";

async function waitFor(what, check) {
  const start = Date.now();
  while (Date.now() - start < DEADLINE_MS) {
    const v = await check();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out: ${what}`);
}

async function register(name) {
  const body = { username: name, password: `pw-${name}-0123456789`, auth: { type: "m.login.dummy" } };
  const post = (b) =>
    fetch(`${baseUrl}/_matrix/client/v3/register`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(b),
    });
  let resp = await post(body);
  let data = await resp.json();
  if (resp.status === 401) {
    body.auth.session = data.session; // servers that ask for the UIA session first
    resp = await post(body);
    data = await resp.json();
  }
  if (!resp.ok) throw new Error(`register ${name} -> ${resp.status}: ${JSON.stringify(data)}`);
  return sdk.createClient({
    baseUrl,
    userId: data.user_id,
    accessToken: data.access_token,
    deviceId: data.device_id,
  });
}

async function decryptedBody(client, roomId, text) {
  return waitFor(`${client.getUserId()} decrypts "${text}"`, async () => {
    const room = client.getRoom(roomId);
    if (!room) return null;
    for (const ev of room.getLiveTimeline().getEvents()) {
      if (!ev.isEncrypted()) continue;
      await client.decryptEventIfNeeded(ev);
      if (ev.getType() === "m.room.message" && ev.getContent().body === text) {
        return { body: ev.getContent().body, wireType: ev.getWireType() };
      }
    }
    return null;
  });
}

async function main() {
  const result = {};
  step = "register";
  const alice = await register(`ssealice${suffix}`);
  const bob = await register(`ssebob${suffix}`);
  await alice.initRustCrypto({ useIndexedDB: false });
  await bob.initRustCrypto({ useIndexedDB: false });

  step = "start clients";
  const slidingSync = new SlidingSync(
    baseUrl,
    new Map([
      [
        "all",
        {
          ranges: [[0, 19]],
          timeline_limit: 10,
          required_state: [
            ["m.room.create", ""],
            ["m.room.name", ""],
            ["m.room.encryption", ""],
            ["m.room.member", "$ME"],
            ["m.room.member", "$LAZY"],
          ],
        },
      ],
    ]),
    { timeline_limit: 10, required_state: [["*", "*"]] },
    alice,
    5000,
  );
  const ready = (c) =>
    new Promise((resolve) => {
      c.on(sdk.ClientEvent.Sync, (state) => {
        if (state === "PREPARED" || state === "SYNCING") resolve();
      });
    });
  const aliceReady = ready(alice);
  const bobReady = ready(bob);
  await alice.startClient({ slidingSync });
  await bob.startClient({ initialSyncLimit: 20 });
  await Promise.race([
    Promise.all([aliceReady, bobReady]),
    waitFor("both clients syncing", () => false),
  ]);

  step = "encrypted DM";
  const { room_id: roomId } = await bob.createRoom({
    is_direct: true,
    preset: "trusted_private_chat",
    invite: [alice.getUserId()],
    initial_state: [
      { type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
    ],
  });
  await waitFor("Alice sees the invite", () => alice.getRoom(roomId)?.getMyMembership() === "invite");
  await alice.joinRoom(roomId);
  await waitFor("Alice's client has joined", () => alice.getRoom(roomId)?.getMyMembership() === "join");
  await waitFor("Bob sees Alice joined", () =>
    bob.getRoom(roomId)?.getMember(alice.getUserId())?.membership === "join",
  );
  result.aliceSeesEncrypted = await alice.getCrypto().isEncryptionEnabledInRoom(roomId);

  step = "Bob to Alice";
  const hello = `Hello Alice, sliding sync 🔒 ${suffix}`;
  await bob.sendTextMessage(roomId, hello);
  result.aliceGot = await decryptedBody(alice, roomId, hello);
  step = "Alice to Bob";
  const reply = `Hi Bob, decrypted over sliding sync ✓ ${suffix}`;
  // Alice's room must know Bob's membership to share the room key with his device.
  await alice.getRoom(roomId).loadMembersIfNeeded();
  await alice.sendTextMessage(roomId, reply);
  result.bobGot = await decryptedBody(bob, roomId, reply);
  result.hello = hello;
  result.reply = reply;

  alice.stopClient();
  bob.stopClient();
  console.log(JSON.stringify(result));
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`step "${step}": ${e?.stack ?? String(e)}`);
    process.exit(1);
  },
);
