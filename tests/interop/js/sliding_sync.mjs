// matrix-js-sdk 43's simplified sliding sync (MSC4186) against a homeserver: the
// `SlidingSync` class that Element Web's sliding-sync mode uses, driven through
// MatrixClient (SlidingSyncSdk) on /_matrix/client/unstable/org.matrix.simplified_msc3575.
//
// Alice syncs with sliding sync only; Bob acts through plain client-server requests.
// What Alice's client must show: the list's room count, the most recent rooms first
// (and a room moving into the window after a new message), room names (explicit and
// from heroes for an unnamed DM), timeline messages, a room subscription with full
// state, an invite that appears and can be joined, a to-device message delivered
// exactly once, typing, a read receipt and account data (global and per room).
//
// Usage: node sliding_sync.mjs <base_url> <suffix>. Prints one JSON line of results on
// stdout; exits non-zero (the failing step on stderr) on failure. Every wait is bounded.
import * as sdk from "matrix-js-sdk";
import { SlidingSync, SlidingSyncEvent, SlidingSyncState } from "matrix-js-sdk/lib/sliding-sync.js";

const [baseUrl, suffix] = process.argv.slice(2);
if (!baseUrl || !suffix) throw new Error("usage: node sliding_sync.mjs <base_url> <suffix>");
const DEADLINE_MS = 30000;
const SSS_PREFIX = "/_matrix/client/unstable/org.matrix.simplified_msc3575";

let step = "start";
function expect(cond, what) {
  if (!cond) throw new Error(`expectation failed: ${what}`);
}

async function waitFor(what, check, ms = DEADLINE_MS) {
  const start = Date.now();
  while (Date.now() - start < ms) {
    const v = await check();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out: ${what}`);
}

// Plain client-server requests (Bob's side and set-up), independent of the SDK's sync.
async function api(user, method, path, body) {
  const resp = await fetch(`${baseUrl}/_matrix/client/v3${path}`, {
    method,
    headers: {
      "Content-Type": "application/json",
      ...(user ? { Authorization: `Bearer ${user.access_token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  if (!resp.ok) throw new Error(`${method} ${path} -> ${resp.status}: ${text.slice(0, 300)}`);
  return JSON.parse(text);
}

async function register(name) {
  const body = { username: name, password: `pw-${name}-0123456789`, auth: { type: "m.login.dummy" } };
  const resp = await fetch(`${baseUrl}/_matrix/client/v3/register`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let data = await resp.json();
  if (resp.status === 401) {
    body.auth.session = data.session; // servers that ask for the UIA session first
    data = await api(null, "POST", "/register", body);
  } else if (!resp.ok) {
    throw new Error(`register ${name} -> ${resp.status}: ${JSON.stringify(data)}`);
  }
  return data;
}

let txn = 0;
const send = (user, roomId, body, extra = {}) =>
  api(user, "PUT", `/rooms/${encodeURIComponent(roomId)}/send/m.room.message/t${suffix}-${++txn}`, {
    msgtype: "m.text",
    body,
    ...extra,
  }).then((r) => r.event_id);

const REQUIRED_STATE = [
  ["m.room.create", ""],
  ["m.room.name", ""],
  ["m.room.avatar", ""],
  ["m.room.encryption", ""],
  ["m.room.member", "$ME"],
  ["m.room.member", "$LAZY"],
];

async function main() {
  const result = { responses: 0 };
  step = "register";
  const alice = await register(`ssalice${suffix}`);
  const bob = await register(`ssbob${suffix}`);
  await api(bob, "PUT", `/profile/${encodeURIComponent(bob.user_id)}/displayname`, {
    displayname: "Bob Sliding",
  });

  // An unnamed DM from Bob (the oldest room), marked as a DM in Alice's m.direct.
  step = "set-up rooms";
  const { room_id: dm } = await api(bob, "POST", "/createRoom", {
    preset: "trusted_private_chat",
    is_direct: true,
    invite: [alice.user_id],
  });
  await api(alice, "POST", `/join/${encodeURIComponent(dm)}`, {});
  await api(alice, "PUT", `/user/${encodeURIComponent(alice.user_id)}/account_data/m.direct`, {
    [bob.user_id]: [dm],
  });
  await send(bob, dm, "dm hello");
  // Five named rooms; room i gets its messages after room i-1, so room 4 is the most recent.
  const rooms = [];
  for (let i = 0; i < 5; i++) {
    const { room_id: roomId } = await api(bob, "POST", "/createRoom", {
      name: `SS Room ${i}`,
      topic: `topic ${i}`,
      preset: "private_chat",
      invite: [alice.user_id],
    });
    await api(alice, "POST", `/join/${encodeURIComponent(roomId)}`, {});
    for (let m = 0; m < 3; m++) await send(bob, roomId, `room ${i} message ${m}`);
    // Room 2's last message mentions Alice: a highlight.
    const mention = i === 2 ? { "m.mentions": { user_ids: [alice.user_id] } } : {};
    await send(bob, roomId, `room ${i} message 3`, mention);
    rooms.push(roomId);
  }

  // Alice's sliding-sync client: the recent window [0,2], a DM list, a room
  // subscription template with all state.
  step = "first response";
  const lists = new Map([
    [
      "recent",
      {
        ranges: [[0, 2]],
        sort: ["by_recency"],
        timeline_limit: 3,
        required_state: REQUIRED_STATE,
      },
    ],
    [
      "dms",
      {
        ranges: [[0, 9]],
        sort: ["by_recency"],
        timeline_limit: 1,
        required_state: REQUIRED_STATE,
        filters: { is_dm: true },
      },
    ],
  ]);
  const client = sdk.createClient({
    baseUrl,
    userId: alice.user_id,
    accessToken: alice.access_token,
    deviceId: alice.device_id,
  });
  const slidingSync = new SlidingSync(
    baseUrl,
    lists,
    { timeline_limit: 10, required_state: [["*", "*"]] },
    client,
    5000,
  );
  // The raw responses, for what the SDK's model does not keep (list counts, which
  // rooms each response carried).
  const responses = [];
  slidingSync.on(SlidingSyncEvent.Lifecycle, (state, resp, err) => {
    if (state === SlidingSyncState.RequestFinished && resp) responses.push(resp);
    if (err) result.syncErrors = (result.syncErrors ?? 0) + 1;
  });
  const toDevice = [];
  client.on(sdk.ClientEvent.ToDeviceEvent, (ev) => {
    if (ev.getType() === "org.example.sliding_ping") toDevice.push(ev.getContent());
  });
  const accountData = [];
  client.on(sdk.ClientEvent.AccountData, (ev) => accountData.push(ev.getType()));
  await client.startClient({ slidingSync });

  const first = await waitFor("first sliding-sync response", () => responses[0]);
  expect(typeof first.pos === "string" && first.pos.length > 0, "a pos token");
  result.recentCount = first.lists?.recent?.count;
  result.dmsCount = first.lists?.dms?.count;
  const bump = (id) => first.rooms[id]?.bump_stamp ?? -1;
  result.firstRooms = Object.keys(first.rooms)
    .filter((id) => rooms.includes(id))
    .sort((a, b) => bump(b) - bump(a))
    .map((id) => rooms.indexOf(id));
  result.dmInFirst = dm in first.rooms;

  step = "rooms in Alice's client";
  const room4 = await waitFor("room 4 in the client", () => client.getRoom(rooms[4]));
  result.names = [2, 3, 4].map((i) => client.getRoom(rooms[i])?.name ?? null);
  result.room4Timeline = room4
    .getLiveTimeline()
    .getEvents()
    .filter((e) => e.getType() === "m.room.message")
    .map((e) => e.getContent().body);
  const dmRoom = await waitFor("the DM in the client", () => client.getRoom(dm));
  result.dmName = dmRoom.name;
  result.dmHeroes = (first.rooms[dm]?.heroes ?? []).map((h) => h.user_id);
  result.room0Known = client.getRoom(rooms[0]) !== null;
  // The sender's name ($LAZY brings Bob's membership) and the unread badges.
  result.room4SenderName = room4.getMember(bob.user_id)?.name ?? null;
  result.unread = [2, 3, 4].map((i) => {
    const r = client.getRoom(rooms[i]);
    return [r.getUnreadNotificationCount("total"), r.getUnreadNotificationCount("highlight")];
  });

  // A new message in the oldest named room moves it to the top of the recent list.
  step = "new message in room 0";
  const bumpId = await send(bob, rooms[0], "room 0 is back on top");
  const room0 = await waitFor("room 0 arrives after its new message", () =>
    client.getRoom(rooms[0])?.getLiveTimeline().getEvents().some((e) => e.getId() === bumpId)
      ? client.getRoom(rooms[0])
      : null,
  );
  result.room0Name = room0.name;
  const byRecency = client
    .getRooms()
    .filter((r) => rooms.includes(r.roomId))
    .sort((a, b) => (b.getBumpStamp() ?? 0) - (a.getBumpStamp() ?? 0))
    .map((r) => rooms.indexOf(r.roomId));
  result.orderAfterMessage = byRecency;
  result.room0Timeline = room0
    .getLiveTimeline()
    .getEvents()
    .filter((e) => e.getType() === "m.room.message")
    .map((e) => e.getContent().body);

  // A room subscription for room 1 (outside the window): timeline_limit 10 and all state.
  step = "room subscription";
  slidingSync.modifyRoomSubscriptions(new Set([rooms[1]]));
  const room1 = await waitFor("room 1 through its subscription", () => {
    const r = client.getRoom(rooms[1]);
    return r?.currentState.getStateEvents("m.room.topic", "") ? r : null;
  });
  result.room1Name = room1.name;
  result.room1Topic = room1.currentState.getStateEvents("m.room.topic", "").getContent().topic;
  result.room1Timeline = room1
    .getLiveTimeline()
    .getEvents()
    .filter((e) => e.getType() === "m.room.message")
    .map((e) => e.getContent().body);

  // An invite appears in the list, and Alice joins from it.
  step = "invite";
  const { room_id: invited } = await api(bob, "POST", "/createRoom", {
    name: "SS Invite",
    preset: "private_chat",
    invite: [alice.user_id],
  });
  const inviteRoom = await waitFor("the invite in Alice's client", () =>
    client.getRoom(invited)?.getMyMembership() === "invite" ? client.getRoom(invited) : null,
  );
  result.inviteName = inviteRoom.name;
  result.inviteInviter = inviteRoom.getMember(alice.user_id)?.events.member?.getSender() ?? null;
  await api(alice, "POST", `/join/${encodeURIComponent(invited)}`, {});
  await waitFor("the joined room in Alice's client", () =>
    client.getRoom(invited)?.getMyMembership() === "join",
  );
  result.inviteJoined = true;

  // A to-device message from Bob, delivered once even across later responses.
  step = "to-device";
  await api(bob, "PUT", `/sendToDevice/org.example.sliding_ping/td${suffix}`, {
    messages: { [alice.user_id]: { [alice.device_id]: { n: 1 } } },
  });
  await waitFor("the to-device message", () => toDevice.length > 0);

  // Typing and a read receipt from Bob in room 0 (in the window).
  step = "typing";
  await api(bob, "PUT", `/rooms/${encodeURIComponent(rooms[0])}/typing/${encodeURIComponent(bob.user_id)}`, {
    typing: true,
    timeout: 20000,
  });
  await waitFor("Bob typing in room 0", () => client.getRoom(rooms[0])?.getMember(bob.user_id)?.typing);
  result.bobTyping = true;
  step = "receipt";
  await api(bob, "POST", `/rooms/${encodeURIComponent(rooms[0])}/receipt/m.read/${encodeURIComponent(bumpId)}`, {});
  await waitFor("Bob's receipt on the new message", () =>
    client.getRoom(rooms[0])?.getEventReadUpTo(bob.user_id) === bumpId,
  );
  result.bobReadUpTo = "the new message";

  // Account data: global and per room (a tag), set by Alice's own requests.
  step = "account data";
  await api(alice, "PUT", `/user/${encodeURIComponent(alice.user_id)}/account_data/org.example.sliding`, {
    hello: "world",
  });
  await waitFor("global account data", () => client.getAccountData("org.example.sliding"));
  result.globalAccountData = client.getAccountData("org.example.sliding").getContent();
  await api(
    alice,
    "PUT",
    `/user/${encodeURIComponent(alice.user_id)}/rooms/${encodeURIComponent(rooms[0])}/tags/m.favourite`,
    { order: 0.5 },
  );
  await waitFor("room 0's tag", () => client.getRoom(rooms[0])?.tags?.["m.favourite"]);
  result.room0Tags = Object.keys(client.getRoom(rooms[0]).tags);

  // One more message after all that: the to-device message is still counted once.
  step = "to-device once";
  const lastId = await send(bob, rooms[0], "last message");
  await waitFor("the last message", () =>
    client.getRoom(rooms[0])?.getLiveTimeline().getEvents().some((e) => e.getId() === lastId),
  );
  result.toDevice = toDevice;

  // A larger timeline_limit for the window: room 4 (still in it) gets its earlier
  // message as history before what Alice had (expanded_timeline).
  step = "timeline_limit 10";
  slidingSync.setList("recent", { ...lists.get("recent"), timeline_limit: 10 });
  const messages4 = () =>
    client
      .getRoom(rooms[4])
      .getLiveTimeline()
      .getEvents()
      .filter((e) => e.getType() === "m.room.message")
      .map((e) => e.getContent().body);
  await waitFor("room 4's earlier message", () => messages4().includes("room 4 message 0"));
  result.room4Expanded = messages4();
  result.responses = responses.length;

  slidingSync.stop();
  client.stopClient();
  console.log(JSON.stringify(result));
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`step "${step}": ${e?.stack ?? String(e)}`);
    process.exit(1);
  },
);
