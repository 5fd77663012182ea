// matrix-js-sdk against pocketserver: two users register, create a room, invite, join,
// send messages, and receive them through the SDK's own /sync loop.
// Usage: node rooms.mjs <base_url>. Prints one JSON line; throws on any failure.
import * as sdk from "matrix-js-sdk";

const baseUrl = process.argv[2];
if (!baseUrl) throw new Error("usage: node rooms.mjs <base_url>");

function expect(cond, what) {
  if (!cond) throw new Error(`expectation failed: ${what}`);
}

async function register(name) {
  const anon = sdk.createClient({ baseUrl });
  const reg = await anon.registerRequest({
    username: name,
    password: `pw-${name}`,
    auth: { type: "m.login.dummy" },
  });
  return sdk.createClient({
    baseUrl,
    userId: reg.user_id,
    accessToken: reg.access_token,
    deviceId: reg.device_id,
  });
}

// Resolve when `predicate()` holds after some event, or fail after a deadline.
function waitFor(client, eventName, predicate, what, ms = 20000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    const check = (...args) => {
      if (predicate(...args)) {
        clearTimeout(timer);
        client.removeListener(eventName, check);
        resolve(args);
      }
    };
    client.on(eventName, check);
  });
}

const alice = await register("jsalice");
const bob = await register("jsbob");
const prepared = (c) =>
  waitFor(c, sdk.ClientEvent.Sync, (state) => state === "PREPARED", "initial sync");
const ready = Promise.all([prepared(alice), prepared(bob)]);
await alice.startClient({ initialSyncLimit: 20 });
await bob.startClient({ initialSyncLimit: 20 });
await ready;

const { room_id: roomId } = await alice.createRoom({ name: "JS room", invite: [bob.getUserId()] });
await waitFor(
  bob,
  sdk.RoomEvent.MyMembership,
  (room, membership) => room.roomId === roomId && membership === "invite",
  "bob's invite",
);
// Listen before joining: alice's sync may deliver the join before joinRoom resolves.
const joinSeen = waitFor(
  alice,
  sdk.RoomStateEvent.Members,
  (_ev, _state, member) => member.userId === bob.getUserId() && member.membership === "join",
  "bob's join seen by alice",
);
await bob.joinRoom(roomId);
await joinSeen;

const got = waitFor(
  bob,
  sdk.RoomEvent.Timeline,
  (ev) => ev.getType() === "m.room.message" && ev.getContent().body === "hello from js",
  "alice's message at bob",
);
await alice.sendMessage(roomId, { msgtype: "m.text", body: "hello from js" });
const [ev] = await got;
expect(ev.getSender() === alice.getUserId(), "sender is alice");

const back = waitFor(
  alice,
  sdk.RoomEvent.Timeline,
  (e) => e.getType() === "m.room.message" && e.getContent().body === "and back",
  "bob's reply at alice",
);
await bob.sendTextMessage(roomId, "and back");
await back;

const room = bob.getRoom(roomId);
expect(room && room.name === "JS room", `room name seen by bob (${room && room.name})`);
expect(room.getJoinedMemberCount() === 2, "two joined members");
const bodies = room
  .getLiveTimeline()
  .getEvents()
  .filter((e) => e.getType() === "m.room.message")
  .map((e) => e.getContent().body);
alice.stopClient();
bob.stopClient();
console.log(JSON.stringify({ ok: true, bodies }));
process.exit(0);
