// Time-to-open behind the buffering nginx, in headless Chromium: the bench's time-to-open scenario (examples/bench/scenarios/
// time_to_open.rs) starts the backend, the proxy and nginx, then runs
//
//   node examples/bench/time_to_open.mjs <nginx origin> <runs>
//
// Each run is a fresh browser profile: a first page load (nothing
// remembered), then a next load in the same profile. A load measures from
// `new BridgeSocket("/echo")` to its `open` event, then one echo round trip
// (which must come back). Prints one JSON line per load:
// {"load": "first"|"next", "run": i, "open_ms", "echo_ms", "transport",
// "attempts"}; exits non-zero when a load fails. Uses playwright-core from
// tests/browser/node_modules (`npm ci --prefix tests/browser`) and Debian's
// /usr/bin/chromium (WSB_CHROMIUM overrides).

import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const [origin, runsArg] = process.argv.slice(2);
if (!origin) {
  console.error("usage: node time_to_open.mjs <origin> [runs]");
  process.exit(2);
}
const runs = Number(runsArg) || 5;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const { chromium } = await import(pathToFileURL(path.join(root, "tests/browser/node_modules/playwright-core/index.mjs")).href);

const browser = await chromium.launch({
  executablePath: process.env.WSB_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"],
});

async function load(context) {
  const page = await context.newPage();
  // Any document of the origin will do: the client is added to it.
  await page.goto(origin + "/_bridge/healthz");
  await page.addScriptTag({ url: "/_bridge/client.js" });
  const result = await page.evaluate(async () => {
    const started = performance.now();
    const socket = new WsBridge.BridgeSocket(location.origin.replace(/^http/, "ws") + "/echo");
    let attempts = [];
    socket.addEventListener("transport", (e) => (attempts = e.detail.attempts.map((a) => `${a.transport}:${a.result}`)));
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onclose = (e) => reject(new Error(`closed before open: ${e.code}`));
      setTimeout(() => reject(new Error("no open within 20 s")), 20000);
    });
    const openMs = performance.now() - started;
    socket.send("ping");
    await new Promise((resolve, reject) => {
      socket.onmessage = (e) => (e.data === "ping" ? resolve() : reject(new Error("echo: " + e.data)));
      setTimeout(() => reject(new Error("no echo within 10 s")), 10000);
    });
    const echoMs = performance.now() - started;
    socket.close(1000);
    return { open_ms: Math.round(openMs), echo_ms: Math.round(echoMs), transport: socket.transport, attempts };
  });
  await page.close();
  return result;
}

let failed = false;
try {
  for (let run = 0; run < runs; run++) {
    const context = await browser.newContext();
    try {
      for (const which of ["first", "next"]) {
        try {
          console.log(JSON.stringify({ load: which, run, ...(await load(context)) }));
        } catch (err) {
          failed = true;
          console.log(JSON.stringify({ load: which, run, error: String(err) }));
        }
      }
    } finally {
      await context.close();
    }
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
