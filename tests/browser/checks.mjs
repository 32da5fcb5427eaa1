// The check runner of run.mjs and share.mjs. Each script registers its
// checks with check() and then awaits runChecks(): every check runs in turn
// in one Chromium, each within its own time limit so a hung one cannot
// stall the rest. The Rust side (run_node_checks in tests/support) reads the
// one JSON line printed per check ({"check", "ok", "ms", "error"?, "info"?});
// the exit status is non-zero when any check failed.
//
//   WSB_CHROMIUM   the browser binary (default /usr/bin/chromium)
//   WSB_ONLY       optional: run only the checks whose name contains this

import { chromium } from "playwright-core";

const checks = [];

export function check(name, timeoutMs, run) {
  checks.push({ name, timeoutMs, run });
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

// Runs the registered checks, prints "`what` checks: ok=N failed=M" and
// exits.
export async function runChecks(what) {
  const only = process.env.WSB_ONLY || "";
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
    ],
  });
  let failed = 0;
  let passed = 0;
  try {
    for (const { name, timeoutMs, run } of checks) {
      if (only && !name.includes(only)) continue;
      const started = Date.now();
      try {
        const info = await withTimeout(run(browser), timeoutMs, name);
        passed++;
        console.log(JSON.stringify({ check: name, ok: true, ms: Date.now() - started, ...(info ? { info } : {}) }));
      } catch (err) {
        failed++;
        console.log(JSON.stringify({ check: name, ok: false, ms: Date.now() - started, error: String(err && err.stack ? err.stack : err) }));
      }
    }
  } finally {
    await browser.close();
  }
  console.log(`${what} checks: ok=${passed} failed=${failed}`);
  process.exit(failed ? 1 : 0);
}
