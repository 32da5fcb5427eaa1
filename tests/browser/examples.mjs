// The examples in real Chromium, driven by tests/examples_in_chromium.rs,
// which starts the servers and passes their addresses:
//
//   WSB_VITE_APP   the proxy in front of examples/vite-app's built files
//   WSB_TERMINAL   the proxy in front of examples/terminal's backend
//   WSB_CHROMIUM   the browser binary (default /usr/bin/chromium)
//
// Each given URL runs one check; each check prints one JSON line
// {"check": ..., "ok": ..., ...}. Exit status 1 if any failed.
import { chromium } from "playwright-core";

const TIMEOUT_MS = 45000;

const checks = [];
if (process.env.WSB_VITE_APP) checks.push({ name: "vite-app", run: viteApp });
if (process.env.WSB_TERMINAL) checks.push({ name: "terminal", run: terminal });

// The Vite app (built with `vite build`, the client from the npm tarball):
// the page opens its BridgeSocket, sends a line and shows the echo.
async function viteApp(page) {
  await page.goto(process.env.WSB_VITE_APP + "/");
  await page.waitForFunction(() => document.body.dataset.state === "open", null, { timeout: 15000 });
  const transport = await page.evaluate(() => document.body.dataset.transport);
  if (transport === "websocket") throw new Error("a WebSocket opened; the route should refuse upgrades");
  const line = `hello from vite ${Date.now()}`;
  await page.fill("#message", line);
  await page.click("#send");
  await page.waitForFunction(
    (want) => [...document.querySelectorAll("#log li")].some((li) => li.textContent === `echo: ${want}`),
    line,
    { timeout: 15000 },
  );
  const version = await page.evaluate(() => document.body.dataset.version);
  return { transport, version };
}

// The terminal: type a command, see what the shell computed.
async function terminal(page) {
  await page.goto(process.env.WSB_TERMINAL + "/");
  await page.waitForFunction(
    () => globalThis.wsbridgeTerminal && globalThis.wsbridgeTerminal.socket.readyState === 1,
    null,
    { timeout: 15000 },
  );
  const transport = await page.evaluate(() => globalThis.wsbridgeTerminal.socket.transport);
  if (transport === "websocket") throw new Error("a WebSocket opened; the route should refuse upgrades");
  // Wait for the prompt, so the keystrokes reach a shell that reads them.
  await waitForBuffer(page, (text) => /[$#] ?$/m.test(text), "a prompt");
  await page.click("#terminal");
  await page.keyboard.type("echo wsbridge-$((6*7))");
  await page.keyboard.press("Enter");
  // The command line itself reads wsbridge-$((6*7)); only the shell's
  // output reads wsbridge-42.
  const text = await waitForBuffer(page, (t) => t.split("\n").some((l) => l.trim() === "wsbridge-42"), "wsbridge-42");
  return { transport, lines: text.split("\n").filter((l) => l.trim()).slice(-3) };
}

async function waitForBuffer(page, pred, what) {
  const deadline = Date.now() + 15000;
  let text = "";
  while (Date.now() < deadline) {
    text = await page.evaluate(() => {
      const buffer = globalThis.wsbridgeTerminal.term.buffer.active;
      const lines = [];
      for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
      return lines.join("\n");
    });
    if (pred(text)) return text;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no ${what} in the terminal; it shows:\n${text}`);
}

const browser = await chromium.launch({
  executablePath: process.env.WSB_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
let failed = checks.length === 0 ? 1 : 0;
try {
  for (const { name, run } of checks) {
    const started = Date.now();
    const context = await browser.newContext();
    const page = await context.newPage();
    const console_ = [];
    page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => console_.push(`pageerror: ${e}`));
    try {
      const info = await Promise.race([
        run(page),
        new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out after ${TIMEOUT_MS} ms`)), TIMEOUT_MS)),
      ]);
      console.log(JSON.stringify({ check: name, ok: true, ms: Date.now() - started, info }));
    } catch (err) {
      failed++;
      console.log(JSON.stringify({ check: name, ok: false, ms: Date.now() - started, error: String(err && err.stack ? err.stack : err), console: console_ }));
    } finally {
      await context.close();
    }
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
