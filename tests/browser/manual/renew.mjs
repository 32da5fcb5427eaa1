// Manual: an ended channel (DELETE, as when it expires or the proxy
// restarts) is replaced and every socket goes on from its cursor.
//     node tests/browser/manual/renew.mjs http://127.0.0.1:18471 worker|leader sse|stream|poll
import { chromium } from "playwright-core";
const [url, mode, transport] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
const context = await browser.newContext();
if (mode === "leader") await context.addInitScript(() => { delete window.SharedWorker; });
const page = await context.newPage();
await page.goto(url + "/api/health");
await page.addScriptTag({ url: url + "/_bridge/client.js" });
console.log(await page.evaluate(async (transport) => {
  const out = [];
  const s = new WsBridge.BridgeSocket(location.origin.replace(/^http/, "ws") + "/echo", [], { transports: [transport] });
  for (const t of ["reconnecting", "resumed", "transport"]) s.addEventListener(t, (e) => out.push([t, e.detail.reason]));
  s.onerror = (e) => out.push(["error", e.message]);
  s.onclose = (e) => out.push(["close", e.code]);
  const got = [];
  s.onmessage = (e) => got.push(e.data);
  await new Promise((r) => (s.onopen = r));
  const before = s.shared.channel;
  s.send("one");
  await new Promise((r) => setTimeout(r, 500));
  const r = await fetch("/_bridge/channels/" + before, { method: "DELETE" });
  out.push(["deleted", r.status]);
  await new Promise((r) => setTimeout(r, 300));
  s.send("two");
  await new Promise((r) => setTimeout(r, 4000));
  s.send("three");
  await new Promise((r) => setTimeout(r, 1000));
  out.push(["got", got.join(","), before !== (s.shared && s.shared.channel), s.state]);
  return out;
}, transport || "sse"));
await browser.close();
