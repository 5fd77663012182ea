// Element Web in a real Chromium (playwright-core), as two people, against pocketserver.
// Usage: node element_web.mjs <element_url> <homeserver_url> <server_name> <out_dir> [mail_dir]
// With mail_dir (where the test's SMTP server drops each mail as <recipient>.txt), Alice
// also adds an e-mail address in Settings and confirms it from the mail's link.
// Prints one JSON line: {"ok": true, "steps": [...], "seen": {...}} or, on the first step
// that fails, {"ok": false, "step", "error", "screenshots", "requests", "console"}; the
// screenshots of both users' pages land in <out_dir>.
//
// Everything goes through Element's own UI, as a person would use it: the sign-up form,
// the room list's menus, the composer (its slash commands for invite and kick), the
// file upload button, the join and accept buttons. Waits are bounded (STEP_MS) and
// poll the page; there are no fixed sleeps.
import { chromium } from "playwright-core";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { deflateSync } from "node:zlib";

const [elementUrl, hsUrl, serverName, outDir, mailDir] = process.argv.slice(2);
if (!outDir) throw new Error("usage: node element_web.mjs <element_url> <hs_url> <server_name> <out_dir>");
mkdirSync(outDir, { recursive: true });

const STEP_MS = 45_000;
const PASSWORD = "Correct-Horse-Battery-9!";
const stamp = Date.now().toString(36).slice(-5);
const requests = []; // homeserver requests that failed (status >= 400 or no answer)
const consoleErrors = [];
const steps = [];
const seen = {};

function expect(cond, what) {
  if (!cond) throw new Error(`expectation failed: ${what}`);
}

// A small valid PNG (one colour, 64x48) made here, so the test needs no fixture file.
function pngImage(width = 64, height = 48) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // truecolour
  const rows = [];
  for (let y = 0; y < height; y++) {
    rows.push(Buffer.from([0]));
    for (let x = 0; x < width; x++) rows.push(Buffer.from([220, (x * 4) & 0xff, (y * 5) & 0xff]));
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(Buffer.concat(rows))),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

async function newPerson(browser, label, localpart) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("console", (m) => {
    // Failed loads are in ``requests`` already; MatrixRTC's complaints about rooms it
    // has not seen yet are Element's own chatter.
    if (m.type() === "error" && !/^Failed to load resource|^MatrixRTCSessionManager/.test(m.text())) {
      consoleErrors.push(`${label}: ${m.text().slice(0, 300)}`);
    }
  });
  page.on("requestfailed", (r) => {
    if (r.url().startsWith(hsUrl)) requests.push(`${label}: ${r.method()} ${r.url()} failed: ${r.failure()?.errorText}`);
  });
  page.on("response", (r) => {
    if (process.env.ELEMENT_DEBUG && r.url().startsWith(hsUrl)) {
      console.error(`${label}: ${r.status()} ${r.request().method()} ${r.url().slice(hsUrl.length, hsUrl.length + 200)}`);
    }
    if (r.url().startsWith(hsUrl) && r.status() >= 400) {
      requests.push(`${label}: ${r.status()} ${r.request().method()} ${r.url().slice(hsUrl.length)}`);
    }
  });
  return { label, page, context, localpart, userId: `@${localpart}:${serverName}` };
}

async function step(name, fn) {
  const t0 = Date.now();
  current = name;
  await fn();
  steps.push({ name, seconds: Math.round((Date.now() - t0) / 100) / 10 });
}
let current = "start";

// Dismiss what Element's first run puts in the way, as a person would: the toasts
// (notifications, key backup, verification) and one-off tips.
async function dismissClutter(p) {
  for (let i = 0; i < 6; i++) {
    const candidates = [
      p.page.locator(".mx_Toast_toast").getByRole("button", { name: /^(Dismiss|Later|Not now|No|Close|Ignore)$/ }),
      p.page.getByRole("button", { name: "OK", exact: true }).filter({ hasNot: p.page.locator(".mx_Dialog") }),
    ];
    let clicked = false;
    for (const c of candidates) {
      const first = c.first();
      if (await first.isVisible().catch(() => false)) {
        await first.click({ timeout: 5000 }).catch(() => {});
        clicked = true;
      }
    }
    if (!clicked) return;
  }
}

function debug(...args) {
  if (process.env.ELEMENT_DEBUG) console.error(new Date().toISOString().slice(11, 23), ...args);
}

async function signUp(p) {
  const { page } = p;
  await page.goto(`${elementUrl}/#/register`);
  debug(p.label, "page loaded");
  await page.locator("#mx_RegistrationForm_username").fill(p.localpart);
  debug(p.label, "form shown");
  await page.locator("#mx_RegistrationForm_password").fill(PASSWORD);
  await page.locator("#mx_RegistrationForm_passwordConfirm").fill(PASSWORD);
  await page.locator("input[type=submit]").click();
  // A server that can send mail offers an optional e-mail address: Element warns once
  // about signing up without one.
  const menu = page.getByRole("button", { name: "User menu" });
  const withoutEmail = page.locator(".mx_Dialog", { hasText: "Continuing without email" });
  await menu.or(withoutEmail).first().waitFor();
  if (await withoutEmail.isVisible()) await withoutEmail.getByRole("button", { name: "Continue" }).click();
  await menu.waitFor();
  debug(p.label, "signed in");
  await page.getByRole("button", { name: "Add room" }).waitFor();
  await dismissClutter(p);
}

async function sendMessage(p, text) {
  const composer = p.page.locator(".mx_RoomView .mx_BasicMessageComposer_input").first();
  await composer.click();
  await composer.fill(text);
  // The send button, not Enter: with a slash command the autocompletion list is open and
  // takes the first Enter. Sent when the composer is empty again.
  await p.page.locator(".mx_RoomView").getByRole("button", { name: "Send message" }).click();
  await p.page.waitForFunction(
    (el) => el.textContent.trim() === "",
    await composer.elementHandle(),
    { timeout: STEP_MS, polling: 100 },
  );
}

// Wait until the room timeline shows an event body with exactly ``text``.
async function seeMessage(p, text) {
  await p.page.locator(".mx_RoomView .mx_EventTile_body", { hasText: text }).first().waitFor();
}

async function openRoomByName(p, name) {
  await p.page.locator(".mx_RoomList").getByRole("treeitem", { name: new RegExp(name) }).first().click();
  await p.page.locator(".mx_RoomHeader", { hasText: name }).first().waitFor();
}

async function createRoom(p, { name, publicAlias }) {
  const { page } = p;
  await page.getByRole("button", { name: "Add room" }).click();
  await page.getByRole("menuitem", { name: "New room" }).click();
  const dialog = page.locator(".mx_CreateRoomDialog");
  await dialog.waitFor();
  await dialog.getByLabel("Name").fill(name);
  if (publicAlias) {
    await dialog.locator(".mx_JoinRuleDropdown").click();
    await page.getByRole("option", { name: /Public room/ }).click();
    const alias = dialog.locator(".mx_RoomAliasField input");
    await alias.fill(publicAlias);
  }
  await dialog.getByRole("button", { name: "Create room" }).click();
  await dialog.waitFor({ state: "detached" });
  await page.locator(".mx_RoomHeader", { hasText: name }).first().waitFor();
  await page.locator(".mx_RoomView .mx_BasicMessageComposer_input").first().waitFor();
}

async function screenshots(people) {
  const files = [];
  for (const p of people) {
    const file = join(outDir, `${p.label}-${current.replace(/[^a-z0-9]+/gi, "_")}.png`);
    try {
      await p.page.screenshot({ path: file, fullPage: true, timeout: 10_000 });
      files.push(file);
    } catch (e) {
      files.push(`${file} (failed: ${e.message})`);
    }
  }
  return files;
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const alice = await newPerson(browser, "alice", `alice_${stamp}`);
const bob = await newPerson(browser, "bob", `bob_${stamp}`);
const people = [alice, bob];
let failure = null;
try {
  await step("sign up through Element's form (both)", async () => {
    await Promise.all([signUp(alice), signUp(bob)]);
    // A new account shows its localpart as display name, not the full user ID.
    await alice.page.getByRole("button", { name: "User menu" }).click();
    await alice.page.locator(".mx_UserMenu_contextMenu_displayName", { hasText: alice.localpart }).waitFor();
    seen.display_name = (await alice.page.locator(".mx_UserMenu_contextMenu_displayName").innerText()).trim();
    await alice.page.keyboard.press("Escape");
  });

  const lobbyAlias = `lobby_${stamp}`;
  await step("create a public room with an address", async () => {
    await createRoom(alice, { name: "Lobby", publicAlias: lobbyAlias });
  });

  await step("open the room by its address and join it", async () => {
    await bob.page.goto(`${elementUrl}/#/room/#${lobbyAlias}:${serverName}`);
    await bob.page.getByRole("button", { name: /Join the discussion|Join/ }).first().click();
    await bob.page.locator(".mx_RoomView .mx_BasicMessageComposer_input").first().waitFor();
    await dismissClutter(bob);
  });

  await step("chat both ways", async () => {
    await sendMessage(alice, "Hello Bob, from Alice");
    await seeMessage(bob, "Hello Bob, from Alice");
    await sendMessage(bob, "Hi Alice, Bob here");
    await seeMessage(alice, "Hi Alice, Bob here");
    // The sender is shown by display name.
    const sender = bob.page.locator(".mx_EventTile", { hasText: "Hello Bob, from Alice" }).locator(".mx_DisambiguatedProfile_displayName");
    seen.sender_shown_as = (await sender.first().innerText()).trim();
  });

  await step("send an image that the other sees", async () => {
    const file = join(outDir, "picture.png");
    writeFileSync(file, pngImage());
    await alice.page.locator(".mx_MessageComposer input[type=file]").first().setInputFiles(file);
    const upload = alice.page.locator(".mx_UploadConfirmDialog");
    await upload.waitFor();
    await upload.getByRole("button", { name: "Upload" }).click();
    const img = bob.page.locator(".mx_RoomView .mx_MImageBody img").first();
    await img.waitFor();
    await bob.page.waitForFunction(
      (el) => el.complete && el.naturalWidth > 0,
      await img.elementHandle(),
      { timeout: STEP_MS, polling: 200 },
    );
    seen.image_width = await img.evaluate((el) => el.naturalWidth);
  });

  await step("encrypted room: invite accepted, both read each other", async () => {
    await createRoom(alice, { name: "Secret" });
    // Element makes private rooms encrypted by default; the room says so.
    await alice.page.locator(".mx_RoomView", { hasText: "Encryption enabled" }).first().waitFor();
    await sendMessage(alice, `/invite ${bob.userId}`);
    await alice.page.locator(".mx_RoomView .mx_EventTile", { hasText: /invited/ }).first().waitFor();
    // Bob accepts the invite from his room list.
    await bob.page.locator(".mx_RoomList").getByRole("treeitem", { name: /Secret/ }).first().click();
    await bob.page.getByRole("button", { name: "Accept" }).click();
    await bob.page.locator(".mx_RoomView .mx_BasicMessageComposer_input").first().waitFor();
    await dismissClutter(bob);
    await sendMessage(alice, "Encrypted hello from Alice");
    await seeMessage(bob, "Encrypted hello from Alice");
    await sendMessage(bob, "Encrypted reply from Bob");
    await seeMessage(alice, "Encrypted reply from Bob");
    for (const p of people) {
      const utd = await p.page.locator(".mx_RoomView", { hasText: /Unable to decrypt|Waiting for this message/ }).count();
      expect(utd === 0, `${p.label} sees an undecryptable message`);
    }
    await bob.page.locator(".mx_RoomView", { hasText: "Encryption enabled" }).first().waitFor();
    seen.encrypted_room = true;
  });

  await step("kick: the kicked user sees the reason", async () => {
    await sendMessage(alice, `/remove ${bob.userId} too noisy`);
    const bar = bob.page.locator(".mx_RoomPreviewBar, .mx_RoomView");
    await bar.filter({ hasText: /removed you|You were removed/ }).first().waitFor();
    await bar.filter({ hasText: "too noisy" }).first().waitFor();
    seen.kick_text = (await bob.page.locator(".mx_RoomPreviewBar").first().innerText()).replace(/\s+/g, " ").trim();
  });

  if (mailDir) {
    await step("add an e-mail address in Settings, confirmed from the mail", async () => {
      const address = `alice_${stamp}@example.org`;
      const { page } = alice;
      await page.getByRole("button", { name: "User menu" }).click();
      await page.getByRole("menuitem", { name: "All settings" }).click();
      const dialog = page.locator(".mx_UserSettingsDialog");
      await dialog.getByRole("tab", { name: "Account" }).click();
      const section = dialog.locator("form", { has: page.getByLabel("Email Address") }).first();
      await section.getByLabel("Email Address").fill(address);
      await section.getByRole("button", { name: "Add" }).click();
      await dialog.getByText("We've sent you an email to verify your address").waitFor();
      // The mail, as the test's SMTP server received it; its link, followed in a tab.
      const file = join(mailDir, `${address}.txt`);
      const deadline = Date.now() + STEP_MS;
      while (!existsSync(file)) {
        expect(Date.now() < deadline, `a mail to ${address}`);
        await page.waitForTimeout(200);
      }
      const link = readFileSync(file, "utf-8").match(/https?:\/\/\S+/)[0];
      const tab = await alice.context.newPage();
      await tab.goto(link);
      seen.link_page = (await tab.locator("h1").innerText()).trim();
      await tab.close();
      await dialog.getByRole("button", { name: "Continue" }).click();
      // User-interactive auth: Element asks for the password.
      const auth = page.locator(".mx_InteractiveAuthDialog");
      await auth.locator("input[type=password]").fill(PASSWORD);
      await auth.getByRole("button", { name: "Continue" }).click();
      await auth.waitFor({ state: "detached" });
      const listed = dialog.locator(".mx_AddRemoveThreepids_existing_address", { hasText: address });
      await listed.waitFor();
      seen.email_listed = (await listed.innerText()).trim();
    });
  }
} catch (e) {
  failure = { step: current, error: String(e?.stack || e).slice(0, 2000) };
}
const result = failure
  ? { ok: false, ...failure, steps, screenshots: await screenshots(people), requests, console: consoleErrors.slice(-30) }
  : { ok: true, steps, seen, requests };
await browser.close();
console.log(JSON.stringify(result));
