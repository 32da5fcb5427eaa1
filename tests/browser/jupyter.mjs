// JupyterLab through wsbridge in real Chromium, driven by tests/jupyter.rs,
// which starts `jupyter lab` on loopback (token auth, Tornado's origin check
// on) and the proxy in front of it with `client.inject = true` and every
// WebSocket upgrade refused, and passes in the environment:
//
//   WSB_JUPYTER_RUNS   JSON [{"name": "http1", "url": "http://127.0.0.1:P", "protocol": "http/1.1"}, ...]
//                      each a proxy in front of the same JupyterLab; `protocol`
//                      is the navigation's nextHopProtocol the run must see
//   WSB_JUPYTER_TOKEN  the server's token
//   WSB_CHROMIUM       the browser binary (default /usr/bin/chromium)
//
// For each run it opens the lab with the token, creates a notebook, runs
// `print(6*7)` and reads 42 from the cell's output, then opens a terminal,
// runs `echo jupyter-$((6*7))` and reads jupyter-42 from it. Prints one JSON
// line per run ({"check", "ok", "ms", "info"?, "error"?}) and exits non-zero
// when one failed.

import { chromium } from "playwright-core";

const RUNS = JSON.parse(required("WSB_JUPYTER_RUNS"));
const TOKEN = required("WSB_JUPYTER_TOKEN");
// Waits on real signals (a selector, a text) are generous: a cold kernel
// start on a shared CI machine takes seconds.
const WAIT = 60_000;
const RUN_TIMEOUT = 100_000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`jupyter.mjs: ${name} is not set (run through cargo test --test jupyter)`);
    process.exit(2);
  }
  return value;
}

async function lab(browser, { url, protocol }) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const log = [];
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") log.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
  try {
    // `reset`: a fresh layout, not the one the previous run left behind.
    await page.goto(`${url}/lab?reset&token=${TOKEN}`, { waitUntil: "domcontentloaded", timeout: WAIT });
    const seen = await page.evaluate(() => ({
      protocol: performance.getEntriesByType("navigation")[0].nextHopProtocol,
      shim: typeof WsBridge !== "undefined",
    }));
    if (seen.protocol !== protocol) throw new Error(`page came over ${seen.protocol}, expected ${protocol}`);
    if (!seen.shim) throw new Error("the page has no injected wsbridge client");
    await page.waitForFunction(() => window.jupyterapp && window.jupyterapp.started !== undefined, null, { timeout: WAIT });
    await page.evaluate(() => window.jupyterapp.started);
    await page.waitForSelector(".jp-LabShell", { timeout: WAIT });

    // A notebook on the Python kernel: its kernel socket is bridged.
    await page.evaluate(() =>
      window.jupyterapp.commands.execute("notebook:create-new", { kernelName: "python3" }),
    );
    const editor = page.locator(".jp-Notebook:visible .jp-Cell .cm-content").first();
    await editor.waitFor({ timeout: WAIT });
    // The kernel must be up before the cell runs, or the run is dropped.
    await page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]:visible').first().waitFor({ timeout: WAIT });
    await editor.click();
    await page.keyboard.type("print(6*7)");
    await page.keyboard.press("Shift+Enter");
    await page.waitForFunction(
      () => [...document.querySelectorAll(".jp-Notebook .jp-OutputArea-output")]
          .some((o) => o.offsetParent !== null && o.textContent.trim() === "42"),
      null,
      { timeout: WAIT },
    );

    // A terminal: its socket is bridged too. Its screen is read from
    // xterm's buffer, whatever renderer draws it (WebGL leaves no text).
    await page.evaluate(() => window.jupyterapp.commands.execute("terminal:create-new"));
    await page.evaluate(() => {
      window.__screenText = () => {
        const widget = window.jupyterapp.shell.currentWidget;
        const term = widget && widget.content && widget.content._term;
        if (!term || !term.buffer) return "";
        const buffer = term.buffer.active;
        const lines = [];
        for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
        return lines.join("\n");
      };
    });
    // A prompt means the shell is attached through the bridge.
    await page.waitForFunction(() => /[$#]\s*$/.test(window.__screenText().trimEnd()), null, { timeout: WAIT });
    await page.locator(".jp-Terminal:visible .xterm-helper-textarea").first().focus();
    await page.keyboard.type("echo jupyter-$((6*7))");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => /(^|\s)jupyter-42(\s|$)/m.test(window.__screenText()), null, { timeout: WAIT });

    return { protocol: seen.protocol };
  } catch (err) {
    const text = await page
      .evaluate(() => document.body && document.body.innerText.slice(0, 2000))
      .catch(() => "");
    throw new Error(`${err && err.stack ? err.stack : err}\n--- page text ---\n${text}\n--- console ---\n${log.slice(-30).join("\n")}`);
  } finally {
    await context.close();
  }
}

function withTimeout(promise, ms, name) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${name} did not finish within ${ms}ms`)), ms);
    }),
  ]);
}

const browser = await chromium.launch({
  executablePath: process.env.WSB_CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
  ],
});
let failed = 0;
try {
  for (const run of RUNS) {
    const started = Date.now();
    try {
      const info = await withTimeout(lab(browser, run), RUN_TIMEOUT, run.name);
      console.log(JSON.stringify({ check: run.name, ok: true, ms: Date.now() - started, info }));
    } catch (err) {
      failed++;
      console.log(JSON.stringify({ check: run.name, ok: false, ms: Date.now() - started, error: String(err) }));
    }
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
