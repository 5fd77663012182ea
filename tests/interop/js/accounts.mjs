// matrix-js-sdk against pocketserver: register, log in on a second device, whoami,
// profile, logout. Usage: node accounts.mjs <base_url>. Prints one JSON line, exits 0
// on success; any failed expectation throws (non-zero exit, message on stderr).
import * as sdk from "matrix-js-sdk";

const baseUrl = process.argv[2];
if (!baseUrl) throw new Error("usage: node accounts.mjs <base_url>");

function expect(cond, what) {
  if (!cond) throw new Error(`expectation failed: ${what}`);
}

const anon = sdk.createClient({ baseUrl });
const versions = await anon.getVersions();
expect(versions.versions.includes("v1.1"), "server advertises v1.1");

const flows = await anon.loginFlows();
expect(flows.flows.some((f) => f.type === "m.login.password"), "password login offered");

// Register through the SDK's UIA helper: the first request gets the 401 with flows.
let session;
try {
  await anon.registerRequest({ username: "jsuser", password: "js-password" });
  throw new Error("registration without auth must answer 401");
} catch (e) {
  expect(e.httpStatus === 401, `401 for the first register request (${e.httpStatus})`);
  expect(e.data.flows.some((f) => f.stages.includes("m.login.dummy")), "dummy flow offered");
  session = e.data.session;
}
const reg = await anon.registerRequest({
  username: "jsuser",
  password: "js-password",
  initial_device_display_name: "js one",
  auth: { type: "m.login.dummy", session },
});
expect(reg.user_id.startsWith("@jsuser:"), `registered ${reg.user_id}`);

const avail = await anon.isUsernameAvailable("jsuser").catch((e) => e);
expect(avail.errcode === "M_USER_IN_USE" || avail === false, "jsuser is taken");

const login = await anon.loginRequest({
  type: "m.login.password",
  identifier: { type: "m.id.user", user: "jsuser" },
  password: "js-password",
  initial_device_display_name: "js two",
});
expect(login.device_id && login.device_id !== reg.device_id, "second device");

const client = sdk.createClient({
  baseUrl,
  accessToken: login.access_token,
  userId: login.user_id,
  deviceId: login.device_id,
});
const who = await client.whoami();
expect(who.user_id === reg.user_id, "whoami user");
expect(who.device_id === login.device_id, "whoami device");

await client.setDisplayName("JS User");
const profile = await client.getProfileInfo(reg.user_id);
expect(profile.displayname === "JS User", "display name set");

const devices = await client.getDevices();
expect(devices.devices.length === 2, `two devices (${devices.devices.length})`);

await client.logout(true);
const after = await client.whoami().catch((e) => e);
expect(after.errcode === "M_UNKNOWN_TOKEN", "token ended by logout");

console.log(JSON.stringify({ ok: true, user_id: reg.user_id, devices: devices.devices.length }));
