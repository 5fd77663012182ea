// matrix-js-sdk 43 with its Rust crypto (WASM) against pocketserver: an encrypted DM
// between two new users, each decrypting the other's message, then cross-signing
// bootstrap. Usage: node e2ee_dm.mjs <base_url> <suffix>. Prints one JSON line of
// results; exits non-zero on failure. Every wait is bounded.
import * as sdk from "matrix-js-sdk";

const [baseUrl, suffix] = process.argv.slice(2);
const DEADLINE_MS = 60000;

function withDeadline(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), DEADLINE_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function waitFor(what, check) {
  const start = Date.now();
  while (Date.now() - start < DEADLINE_MS) {
    const v = await check();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out: ${what}`);
}

async function makeUser(name) {
  const password = `pw-${name}-secret`;
  const anon = sdk.createClient({ baseUrl });
  const reg = await anon.registerRequest({
    username: name,
    password,
    auth: { type: "m.login.dummy" },
  });
  const client = sdk.createClient({
    baseUrl,
    userId: reg.user_id,
    accessToken: reg.access_token,
    deviceId: reg.device_id,
  });
  await client.initRustCrypto({ useIndexedDB: false });
  const synced = new Promise((resolve) => {
    client.on(sdk.ClientEvent.Sync, (state) => {
      if (state === "PREPARED" || state === "SYNCING") resolve();
    });
  });
  await client.startClient({ initialSyncLimit: 20 });
  await withDeadline(synced, `${name} first sync`);
  return { client, password };
}

async function decryptedBody(client, roomId, text) {
  return waitFor(`${client.getUserId()} decrypts "${text}"`, async () => {
    const room = client.getRoom(roomId);
    if (!room) return null;
    for (const ev of room.getLiveTimeline().getEvents()) {
      if (!ev.isEncrypted()) continue;
      await client.decryptEventIfNeeded(ev);
      if (ev.getType() === "m.room.message" && ev.getContent().body === text) {
        return { body: ev.getContent().body, wireType: ev.getWireType(), sender: ev.getSender() };
      }
    }
    return null;
  });
}

async function main() {
  const a = await makeUser(`jsalice${suffix}`);
  const b = await makeUser(`jsbob${suffix}`);
  const alice = a.client;
  const bob = b.client;
  const result = {};

  const { room_id: roomId } = await alice.createRoom({
    is_direct: true,
    preset: "trusted_private_chat",
    invite: [bob.getUserId()],
    initial_state: [
      { type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
    ],
  });
  await waitFor("bob sees the invite", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
  await bob.joinRoom(roomId);
  await waitFor("alice sees bob joined", () =>
    alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join");
  result.aliceSeesEncrypted = await alice.getCrypto().isEncryptionEnabledInRoom(roomId);

  const hello = `Hello Bob from js-sdk 🔒 ${suffix}`;
  await alice.sendTextMessage(roomId, hello);
  result.bobGot = await decryptedBody(bob, roomId, hello);
  const reply = `Hi Alice, js-sdk here ✓ ${suffix}`;
  await bob.sendTextMessage(roomId, reply);
  result.aliceGot = await decryptedBody(alice, roomId, reply);
  result.hello = hello;
  result.reply = reply;

  // Cross-signing bootstrap for Alice (user-interactive auth with her password if asked).
  const crypto = alice.getCrypto();
  await crypto.bootstrapCrossSigning({
    authUploadDeviceSigningKeys: async (makeRequest) => {
      await makeRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: alice.getUserId() },
        password: a.password,
      });
    },
  });
  result.crossSigningReady = await crypto.isCrossSigningReady();
  // The SDK learns its device's new signature from its next /keys/query, which the
  // server prompts with device_lists.changed for alice herself.
  result.ownDeviceCrossSigned = await waitFor("alice's device is cross-signed", async () => {
    const status = await crypto.getDeviceVerificationStatus(alice.getUserId(), alice.getDeviceId());
    return Boolean(status?.crossSigningVerified);
  }).catch(() => false);
  result.aliceMasterKey = (await crypto.getCrossSigningKeyId()) ?? null;
  // Bob downloads Alice's new identity.
  const bobCrypto = bob.getCrypto();
  const ident = await waitFor("bob sees alice's identity", async () => {
    const keys = await bob.downloadKeysForUsers([alice.getUserId()]);
    const mk = keys.master_keys?.[alice.getUserId()];
    return mk ? Object.values(mk.keys)[0] : null;
  });
  result.bobSeesMasterKey = ident;
  result.bobUserStatus = Boolean(await bobCrypto.getUserVerificationStatus(alice.getUserId()));

  alice.stopClient();
  bob.stopClient();
  console.log(JSON.stringify(result));
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e?.stack ?? String(e));
    process.exit(1);
  },
);
