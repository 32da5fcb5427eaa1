// Manual Chromium checks of sharing one channel between sockets and tabs,
// against the demo (examples/demo.rs: /ws is the chat room, bridged only;
// /echo an echo). Not run by cargo test; tests/browser/run.mjs has the
// automated checks. With tests/browser/node_modules installed:
//
//     cargo run --example demo -- --listen 127.0.0.1:18471 --backend 127.0.0.1:18472 &
//     node tests/browser/manual/tabs.mjs http://127.0.0.1:18471 12          # SharedWorker hub
//     node tests/browser/manual/tabs.mjs http://127.0.0.1:18471 12 leader close   # leader tab, closed mid-way
//     node tests/browser/manual/tabs.mjs http://127.0.0.1:18471 4 own       # each tab its own hub
//
// Each of TABS tabs opens two sockets to the chat and sends 30 messages from
// each; every socket must get every message, in order per sender, once.
// "lagged" means the chat backend's room backlog (256) overflowed: a load
// too heavy for the demo, not a loss in the bridge.
import { chromium } from "playwright-core";
const [url, tabsArg, mode, closeLeader] = process.argv.slice(2);
const TABS = Number(tabsArg || 6);
const K = 30;
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
const context = await browser.newContext();
if (mode === "leader") await context.addInitScript(() => { delete window.SharedWorker; });
if (mode === "tabsopt") await context.addInitScript(() => { globalThis.SHAREMODE = "tabs"; });
if (mode === "own") await context.addInitScript(() => { delete window.SharedWorker; delete window.BroadcastChannel; });
const pages = [];
for (let i = 0; i < TABS; i++) {
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.log(`[tab${i}]`, m.text()); });
  page.on("pageerror", (e) => console.log(`[tab${i} pageerror]`, e.message));
  await page.goto(url + "/api/health");
  await page.addScriptTag({ url: url + "/_bridge/client.js" });
  if (process.env.TRACE) await page.evaluate(() => {
    window.OUT = [];
    const out = window.OUT;
    const Orig = window.SharedWorker;
    if (!Orig) return;
    window.SharedWorker = function (u, o) {
      const w = new Orig(u, o);
      w.addEventListener("error", (e) => out.push("werror " + e.message));
      const pm = w.port.postMessage.bind(w.port);
      w.port.postMessage = (m) => { out.push(Date.now() % 100000 + " -> " + JSON.stringify(m).slice(0, 150)); pm(m); };
      w.port.addEventListener("message", (e) => out.push(Date.now() % 100000 + " <- " + JSON.stringify(e.data).slice(0, 150)));
      return w;
    };
  });
  pages.push(page);
}
const t0 = Date.now();
const openTab = (page, i) => page.evaluate(async ({ i }) => {
  window.S = [];
  for (let j = 0; j < 2; j++) {
    const s = new WsBridge.BridgeSocket(location.origin.replace(/^http/, "ws") + `/ws?nick=t${i}s${j}`, [], { transports: ["sse", "stream", "poll"], shareMode: globalThis.SHAREMODE || "auto" });
    s.inbox = []; s.errors = []; s.states = [];
    s.onmessage = (e) => { const m = JSON.parse(e.data); if (m.type === "message") s.inbox.push(m.text); if (m.type === "lagged") s.errors.push("lagged " + m.missed); };
    s.onerror = (e) => s.errors.push(e.message);
    s.onclose = (e) => s.errors.push("close " + e.code);
    for (const t of ["reconnecting", "resumed", "transport"]) s.addEventListener(t, (e) => s.states.push(t + ":" + (e.detail && e.detail.reason)));
    await new Promise((res, rej) => { s.onopen = res; setTimeout(() => rej(new Error("no open " + s.errors)), 15000); });
    window.S.push(s);
  }
}, { i }).catch(async (e) => { console.log("tab", i, e.message, JSON.stringify(await page.evaluate(() => window.OUT), null, 1)); throw e; });
await openTab(pages[0], 0);
await Promise.all(pages.slice(1).map((page, i) => openTab(page, i + 1)));
console.log("all open in", Date.now() - t0, "ms");
if (process.env.TRACE) for (const i of [0, TABS - 1]) console.log("tab", i, JSON.stringify(await pages[i].evaluate(() => window.OUT), null, 1));
console.log(await pages[0].evaluate(() => window.S.map((s) => JSON.stringify({ t: s.transport, shared: s.shared }))));
// Every socket sends K.
const senders = [];
await Promise.all(pages.map((page, i) => page.evaluate(async ({ i, K }) => {
  for (let k = 0; k < K; k++) for (let j = 0; j < 2; j++) { window.S[j].send(`t${i}s${j}:${k}`); }
}, { i, K })));
const expected = TABS * 2 * K;
let alive = pages.slice();
if (closeLeader) {
  await new Promise((r) => setTimeout(r, 300));
  await pages[0].close({ runBeforeUnload: false });
  alive = pages.slice(1);
  console.log("closed tab 0");
}
const deadline = Date.now() + 30000;
let ok = false;
while (Date.now() < deadline) {
  const counts = await Promise.all(alive.map((p) => p.evaluate(() => window.S.map((s) => s.inbox.length))));
  const flat = counts.flat();
  if (flat.every((c) => c >= (closeLeader ? expected - 2 * K : expected))) { ok = true; await new Promise((r) => setTimeout(r, 2000)); break; }
  await new Promise((r) => setTimeout(r, 500));
  if (Date.now() > deadline - 500) console.log("counts", JSON.stringify(counts), "expected", expected);
}
// Verify per-sender order, no duplicates.
let problems = 0;
for (const [pi, p] of alive.entries()) {
  const res = await p.evaluate(() => window.S.map((s) => ({ inbox: s.inbox, errors: s.errors, states: s.states, shared: s.shared, t: s.transport })));
  for (const s of res) {
    const seen = new Set();
    const last = {};
    for (const m of s.inbox) {
      if (seen.has(m)) { problems++; if (problems < 5) console.log("dup", m); }
      seen.add(m);
      const [who, k] = m.split(":");
      if (last[who] !== undefined && Number(k) !== last[who] + 1) { problems++; if (problems < 5) console.log("order", who, last[who], k); }
      last[who] = Number(k);
    }
    if (s.errors.length || s.states.length > 1) console.log("tab", pi, JSON.stringify({ errors: s.errors, states: s.states.slice(0, 6), shared: s.shared, t: s.t }));
  }
}
console.log(ok ? "ALL DELIVERED" : "MISSING", "problems", problems, "in", Date.now() - t0, "ms");
await browser.close();
