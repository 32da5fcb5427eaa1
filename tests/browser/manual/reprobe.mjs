// Manual: a shared reader on poll re-probes in the background and moves to
// SSE (transport event, memory written), and a socket on poll by itself
// (share: false) records SSE for the next load. Usage as in tabs.mjs:
//     node tests/browser/manual/reprobe.mjs http://127.0.0.1:18471
import { chromium } from "playwright-core";
const url = process.argv[2];
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
const context = await browser.newContext();
const page = await context.newPage();
await page.goto(url + "/api/health");
await page.addScriptTag({ url: url + "/_bridge/client.js" });
console.log(await page.evaluate(async () => {
  const out = [];
  const s = new WsBridge.BridgeSocket(location.origin.replace(/^http/, "ws") + "/echo", [], { transports: ["poll", "sse"], reprobeInterval: 2000, remember: true });
  s.addEventListener("transport", (e) => out.push(["transport", e.detail.transport, e.detail.previous, e.detail.reason]));
  const got = [];
  s.onmessage = (e) => got.push(e.data);
  await new Promise((r) => (s.onopen = r));
  out.push(["open", s.transport, JSON.stringify(s.shared)]);
  for (let i = 0; i < 20; i++) { s.send("m" + i); await new Promise((r) => setTimeout(r, 300)); }
  await new Promise((r) => setTimeout(r, 1000));
  out.push(["got", got.length, got.join(",") === Array.from({ length: 20 }, (_, i) => "m" + i).join(",")]);
  out.push(["memory", localStorage.getItem("wsbridge:transport:" + location.origin + "/_bridge")]);
  return out;
}));
// Busy tab: tab B blocks for 4 s; tab A keeps echoing.
const a = await context.newPage();
const b = await context.newPage();
for (const p of [a, b]) { await p.goto(url + "/api/health"); await p.addScriptTag({ url: url + "/_bridge/client.js" }); }
await Promise.all([a, b].map((p) => p.evaluate(async () => {
  window.s = new WsBridge.BridgeSocket(location.origin.replace(/^http/, "ws") + "/ws?nick=" + Math.random().toString(36).slice(2, 6), [], { transports: ["sse"] });
  window.got = [];
  window.s.onmessage = (e) => { const m = JSON.parse(e.data); if (m.type === "message") window.got.push(m.text); };
  await new Promise((r) => (window.s.onopen = r));
})));
const blocked = b.evaluate(() => { const t = Date.now(); while (Date.now() - t < 4000); return "unblocked"; });
const t0 = Date.now();
const rtt = await a.evaluate(async () => {
  const t = Date.now();
  const n = window.got.length;
  window.s.send("ping-from-a");
  while (window.got.length === n) await new Promise((r) => setTimeout(r, 10));
  return Date.now() - t;
});
console.log("A's round trip while B is busy:", rtt, "ms; shared:", await a.evaluate(() => JSON.stringify(window.s.shared)));
console.log(await blocked, "after", Date.now() - t0);
await new Promise((r) => setTimeout(r, 500));
console.log("B got", await b.evaluate(() => window.got));
const solo = await (await browser.newContext()).newPage();
await solo.goto(url + "/api/health");
await solo.addScriptTag({ url: url + "/_bridge/client.js" });
console.log(await solo.evaluate(async () => {
  const out = [];
  const s = new WsBridge.BridgeSocket(location.origin.replace(/^http/, "ws") + "/echo", [], { transports: ["poll", "sse"], reprobeInterval: 2000, share: false });
  s.addEventListener("transport", (e) => out.push(["transport", e.detail.transport, e.detail.previous, e.detail.reason]));
  await new Promise((r) => (s.onopen = r));
  out.push(["open", s.transport, JSON.stringify(s.shared)]);
  await new Promise((r) => setTimeout(r, 4000));
  out.push(["memory", localStorage.getItem("wsbridge:transport:" + location.origin + "/_bridge")]);
  return out;
}));
await browser.close();
