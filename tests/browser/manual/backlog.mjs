// Manual: per-session backpressure. Tab B is busy for 5 s while tab A gets
// 1500 chat messages; A is not stalled, B's session is detached past the
// hub's backlog bound and attached again when B catches up: B gets all 1500
// in order.
//     node tests/browser/manual/backlog.mjs http://127.0.0.1:18471
import { chromium } from "playwright-core";
const [url, mode] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
const context = await browser.newContext();
if (mode === "leader") await context.addInitScript(() => { delete window.SharedWorker; });
const a = await context.newPage();
const b = await context.newPage();
for (const p of [a, b]) { await p.goto(url + "/api/health"); await p.addScriptTag({ url: url + "/_bridge/client.js" }); }
for (const p of [a, b]) await p.evaluate(async () => {
  window.s = new WsBridge.BridgeSocket(location.origin.replace(/^http/, "ws") + "/ws?nick=" + Math.random().toString(36).slice(2, 6), [], { transports: ["sse"] });
  window.got = []; window.errs = [];
  window.s.onmessage = (e) => { const m = JSON.parse(e.data); if (m.type === "message") window.got.push(m.text); if (m.type === "lagged") window.errs.push("lagged"); };
  window.s.onerror = (e) => window.errs.push(e.message);
  await new Promise((r) => (window.s.onopen = r));
});
const N = 1500;
const blocked = b.evaluate(() => { const t = Date.now(); while (Date.now() - t < 5000); return "unblocked"; });
const t0 = Date.now();
const aTime = await a.evaluate(async (N) => {
  const t = Date.now();
  for (let i = 0; i < N; i += 100) { for (let j = i; j < i + 100; j++) window.s.send("x" + j); await new Promise((r) => setTimeout(r, 50)); }
  while (window.got.length < N && Date.now() - t < 20000) await new Promise((r) => setTimeout(r, 20));
  return [window.got.length, Date.now() - t];
}, N);
console.log("A got", aTime, "while B blocked");
console.log(await blocked, Date.now() - t0);
const bRes = await b.evaluate(async (N) => {
  const t = Date.now();
  while (window.got.length < N && Date.now() - t < 20000) await new Promise((r) => setTimeout(r, 20));
  const inOrder = window.got.every((m, i) => m === "x" + i);
  return [window.got.length, inOrder, Date.now() - t, window.errs];
}, N);
console.log("B got", bRes);
await browser.close();
