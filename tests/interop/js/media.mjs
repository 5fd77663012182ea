// matrix-js-sdk media against pocketserver: register, upload a file with uploadContent,
// read the upload limit, download it back through the authenticated media endpoint
// (mxcUrlToHttp with useAuthentication) and compare bytes. Usage: node media.mjs <base_url>.
// Prints one JSON line, exits 0 on success.
import * as sdk from "matrix-js-sdk";
import { createHash, randomBytes } from "node:crypto";

const baseUrl = process.argv[2];
if (!baseUrl) throw new Error("usage: node media.mjs <base_url>");

function expect(cond, what) {
  if (!cond) throw new Error(`expectation failed: ${what}`);
}

const anon = sdk.createClient({ baseUrl });
let session;
try {
  await anon.registerRequest({ username: "jsmedia", password: "js-media-pw" });
} catch (e) {
  session = e.data.session;
}
const reg = await anon.registerRequest({
  username: "jsmedia",
  password: "js-media-pw",
  auth: { type: "m.login.dummy", session },
});
const client = sdk.createClient({
  baseUrl,
  accessToken: reg.access_token,
  userId: reg.user_id,
  deviceId: reg.device_id,
});

const config = await client.getMediaConfig(true);
expect(config["m.upload.size"] > 0, "media config has m.upload.size");

const data = randomBytes(3 * 1024 * 1024 + 17);
const upload = await client.uploadContent(new Blob([data], { type: "application/pdf" }), {
  name: "report.pdf",
  type: "application/pdf",
});
expect(upload.content_uri.startsWith("mxc://"), `content_uri ${upload.content_uri}`);

const url = client.mxcUrlToHttp(upload.content_uri, undefined, undefined, undefined, false, true, true);
expect(url.includes("/_matrix/client/v1/media/download/"), `authenticated URL ${url}`);
const resp = await fetch(url, { headers: { Authorization: `Bearer ${reg.access_token}` } });
expect(resp.status === 200, `download status ${resp.status}`);
const got = Buffer.from(await resp.arrayBuffer());
const same = createHash("sha256").update(got).digest("hex") === createHash("sha256").update(data).digest("hex");
expect(same, "downloaded bytes equal the upload");
const disposition = resp.headers.get("content-disposition");
expect(disposition === 'attachment; filename="report.pdf"', `disposition ${disposition}`);
expect(resp.headers.get("content-type") === "application/pdf", "content type kept");

const anonymous = await fetch(url);
expect(anonymous.status === 401, `no token: ${anonymous.status}`);

console.log(JSON.stringify({ ok: true, size: got.length, uri_server: upload.content_uri.split("/")[2] }));
