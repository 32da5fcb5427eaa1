// Real-Chromium checks of sharing: every bridged socket of every tab of one
// browser profile on ONE multiplexed channel. Driven by tests/share.rs,
// which starts the room backend, a proxy per check (client.inject = true,
// /room refusing WebSocket upgrades), a relay that cuts connections and
// the demo chat, and passes them in WSB_SHARE_SETUP (JSON):
//
//   tabs, leader, flaky, unshared, demo   {url, metrics}: where the check's pages
//                                         load from, and its proxy's admin /metrics
//                                         (flaky's url is the relay in front of it)
//   relay_control                         127.0.0.1:C: write "1" to start cutting
//                                         every connection every 300 ms, "0" to stop
//   screenshot                            where the demo check saves a .png
//
//   WSB_CHROMIUM   the browser binary (default /usr/bin/chromium)
//   WSB_ONLY       optional: run only the checks whose name contains this
//   WSB_SHARE      optional: "off" makes every socket opt out (share: false),
//                  to see the checks fail without sharing
//   WSB_DEBUG      optional: every page's console on stderr
//
// Every tab of a check is a page of one browser context (one profile). The
// pages (/tabs.html) have never heard of wsbridge: each opens one
// `new WebSocket()` per room in ?rooms= and keeps what each receives in
// window.sockets. Messages are "TAB:SOCKET:SEQ"; socket k of every tab is
// in room k, where each message goes to every member, the sender included.
//
// Prints one JSON line per check ({"check", "ok", "ms", "error"?, "info"?})
// and exits non-zero when any check failed.

import net from "node:net";

import { check, runChecks } from "./checks.mjs";

const SETUP = JSON.parse(process.env.WSB_SHARE_SETUP || "null");
if (!SETUP) {
  console.error("share.mjs: WSB_SHARE_SETUP is not set (run through cargo test --test share)");
  process.exit(2);
}
const SHARE_OFF = process.env.WSB_SHARE === "off";
// Optional: every page's console on stderr.
const DEBUG = Boolean(process.env.WSB_DEBUG);
const BRIDGED = ["sse", "stream", "poll"];

// How long a check waits for tabs to load and sockets to open, and for
// messages to arrive. Generous for two busy cores; a wedged profile
// (HTTP/1.1's six connections per host all held) never gets there.
const OPEN_WITHIN_MS = 15000;
const DELIVER_WITHIN_MS = 20000;
// After the last expected message, how long to watch for a late duplicate.
const SETTLE_MS = 500;

// ------------------------------------------------------------ the tabs

// An error that says the profile stopped making progress: a tab that did
// not load, sockets that did not open, messages that did not arrive.
class Wedged extends Error {}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function tag(name) {
  return `${name}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
}

// A browser context (one profile). `share: false` (or WSB_SHARE=off) makes
// every socket of its pages opt out; `noSharedWorker` removes SharedWorker
// from every page, so the client must elect a leader tab.
async function profile(browser, { share = !SHARE_OFF, noSharedWorker = false, viewport } = {}) {
  const context = await browser.newContext(viewport ? { viewport } : {});
  if (noSharedWorker) {
    await context.addInitScript(() => {
      delete window.SharedWorker;
    });
  }
  if (!share) {
    // client.js defines WsBridge once, as the injected tag loads; wrap what
    // it defines so every socket, the shim's included, gets share: false.
    await context.addInitScript(() => {
      let wrapped;
      Object.defineProperty(window, "WsBridge", {
        configurable: true,
        get: () => wrapped,
        set(real) {
          const optOut = (options) => ({ ...(options || {}), share: false });
          class BridgeSocket extends real.BridgeSocket {
            constructor(url, protocols, options) {
              super(url, protocols, optOut(options));
            }
          }
          wrapped = Object.freeze({ ...real, BridgeSocket, installWebSocketShim: (match, options) => real.installWebSocketShim(match, optOut(options)) });
        },
      });
    });
  }
  const errors = [];
  return { context, errors, close: () => context.close() };
}

// Opens `count` tabs of /tabs.html one after the other (so tab 0 is the
// first to ask for a channel), each with a socket per room.
async function openTabs(profile, origin, count, rooms, deadline) {
  const tabs = [];
  for (let i = 0; i < count; i++) {
    const page = await profile.context.newPage();
    page.on("pageerror", (e) => profile.errors.push(`tab ${i}: ${e.message}`));
    if (DEBUG) page.on("console", (m) => console.error(`[tab ${i} console.${m.type()}] ${m.text()}`));
    // The channel's requests this tab made: in leader-tab mode, only the
    // leader's show here.
    const tab = { i, page, closed: false, channelRequests: 0, inFlight: new Set() };
    page.on("request", (r) => {
      if (/\/channels(\/|$)/.test(new URL(r.url()).pathname)) tab.channelRequests++;
      tab.inFlight.add(r);
    });
    page.on("requestfinished", (r) => tab.inFlight.delete(r));
    page.on("requestfailed", (r) => tab.inFlight.delete(r));
    const url = `${origin}/tabs.html?tab=${i}&rooms=${rooms.map(encodeURIComponent).join(",")}`;
    try {
      await page.goto(url, { waitUntil: "domcontentloaded", timeout: Math.max(1, deadline - Date.now()) });
    } catch (e) {
      throw new Wedged(`tab ${i} of ${count} did not load (${tabs.length} tabs open): ${String(e.message).split("\n")[0]}`);
    }
    tabs.push(tab);
  }
  return tabs;
}

// What a tab's sockets show now. `shared` is copied field by field, so a
// non-cloneable value inside cannot break the read.
function readTab(tab) {
  return tab.page.evaluate(() =>
    window.sockets.map((s) => {
      let shared = s.ws.shared;
      if (shared !== null && shared !== undefined) {
        const copy = {};
        for (const [k, v] of Object.entries(shared)) copy[k] = v === null || typeof v !== "object" ? v : JSON.parse(JSON.stringify(v));
        shared = copy;
      }
      return {
        opened: s.opened,
        received: s.inbox.length,
        errors: s.errors,
        close: s.close,
        readyState: s.ws.readyState,
        transport: s.ws.transport === undefined ? null : s.ws.transport,
        shared: shared === undefined ? "undefined" : shared,
      };
    }),
  );
}

function describe(tabs, states) {
  return tabs
    .map((t, j) => `tab ${t.i}: ` + states[j].map((s) => `${s.opened ? "open" : `not open (readyState ${s.readyState}, ${s.transport}, errors ${JSON.stringify(s.errors)})`}/${s.received}${s.close ? "/closed " + s.close.code : ""}`).join(" "))
    .join("; ");
}

// Waits until `ok(states)` holds for the open tabs; Wedged past `deadline`.
async function until(tabs, what, ok, deadline) {
  const live = tabs.filter((t) => !t.closed);
  for (;;) {
    const states = await Promise.all(live.map(readTab));
    const closed = states.flat().find((s) => s.close);
    if (closed) throw new Error(`a socket closed while waiting for ${what}: ${JSON.stringify(closed)}; ${describe(live, states)}`);
    const failed = states.flat().find((s) => s.errors.length);
    if (failed) throw new Error(`a socket reported an error while waiting for ${what}: ${JSON.stringify(failed)}; ${describe(live, states)}`);
    if (ok(states)) return states;
    if (Date.now() > deadline) {
      if (DEBUG) {
        for (const t of live) console.error(`[tab ${t.i} requests in flight] ${[...t.inFlight].map((r) => `${r.method()} ${new URL(r.url()).pathname}`).join(", ")}`);
      }
      throw new Wedged(`wedged: ${what} not done within the time given; ${describe(live, states)}`);
    }
    await sleep(200);
  }
}

// Each open tab sends `from`..`to`-1 through each of its sockets, at once.
function sendAll(tabs, from, to) {
  return Promise.all(
    tabs
      .filter((t) => !t.closed)
      .map((t) =>
        t.page.evaluate(
          ({ tab, from, to }) => {
            window.sockets.forEach((s, k) => {
              for (let n = from; n < to; n++) s.ws.send(`${tab}:${k}:${n}`);
            });
          },
          { tab: t.i, from, to },
        ),
      ),
  );
}

// Each open tab sends `from`..`to`-1 through each of its sockets, one
// message per socket every `everyMs`, in the background: the tab's
// `window.paced` counts how far it got.
function sendPaced(tabs, from, to, everyMs) {
  return Promise.all(
    tabs
      .filter((t) => !t.closed)
      .map((t) =>
        t.page.evaluate(
          ({ tab, from, to, everyMs }) => {
            window.paced = from;
            const timer = setInterval(() => {
              window.sockets.forEach((s, k) => s.ws.send(`${tab}:${k}:${window.paced}`));
              if (++window.paced === to) clearInterval(timer);
            }, everyMs);
          },
          { tab: t.i, from, to, everyMs },
        ),
      ),
  );
}

const inboxes = (tab) => tab.page.evaluate(() => window.sockets.map((s) => s.inbox.slice()));

// What one socket received, checked: only messages of its own room, from
// each sender in `expect` (tab -> count, or tab -> "prefix" for any gap-free
// start) SEQ 0, 1, 2, ... once each, in order, nothing else. Returns the
// problems found and how many each sender got.
function checkInbox(inbox, k, expect) {
  const problems = [];
  const got = new Map();
  for (const m of inbox) {
    const [tab, sock, seq] = m.split(":");
    if (tab === "lagged") {
      problems.push(`the backend dropped ${sock} for a lagging member`);
      continue;
    }
    if (Number(sock) !== k) {
      problems.push(`${m} delivered to socket ${k}, another room's`);
      continue;
    }
    if (!(tab in expect)) {
      problems.push(`${m} from a sender not expected`);
      continue;
    }
    const next = got.get(tab) || 0;
    if (Number(seq) !== next) {
      problems.push(`from tab ${tab}: ${Number(seq) < next ? "doubled" : "lost or reordered"}: SEQ ${seq} where ${next} was due`);
      if (Number(seq) < next) continue;
    }
    got.set(tab, Number(seq) + 1);
  }
  for (const [tab, want] of Object.entries(expect)) {
    const n = got.get(tab) || 0;
    if (want !== "prefix" && n !== want) problems.push(`from tab ${tab}: ${n} of ${want}`);
  }
  return { problems, got };
}

// Checks every socket of every open tab; `expect(k)` is checkInbox's.
async function checkAll(tabs, expect) {
  const problems = [];
  const counts = [];
  for (const t of tabs.filter((t) => !t.closed)) {
    const all = await inboxes(t);
    all.forEach((inbox, k) => {
      const r = checkInbox(inbox, k, expect(k));
      counts.push({ tab: t.i, k, got: r.got });
      for (const p of r.problems.slice(0, 3)) problems.push(`tab ${t.i} socket ${k}: ${p}`);
    });
  }
  if (problems.length) throw new Error(`${problems.length} problem(s): ${problems.slice(0, 12).join("; ")}`);
  return counts;
}

// The proxy's metrics, summed over labels: {name: value}.
async function metrics(url) {
  const text = await (await fetch(url)).text();
  const out = {};
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m) out[m[1]] = (out[m[1]] || 0) + Number(m[3]);
  }
  return out;
}

// Waits (a few seconds at most) until the metrics show `want`; returns
// what they showed last either way, and whether it matched.
async function metricsSettle(url, want, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const m = await metrics(url);
    const shown = Object.fromEntries(Object.keys(want).map((k) => [k, m[k] ?? null]));
    const ok = Object.entries(want).every(([k, v]) => shown[k] === v);
    if (ok || Date.now() > deadline) return { ok, shown };
    await sleep(200);
  }
}

async function assertMetrics(url, want, what) {
  const { ok, shown } = await metricsSettle(url, want);
  if (!ok) throw new Error(`${what}: the proxy's metrics show ${JSON.stringify(shown)}, expected ${JSON.stringify(want)}`);
  return shown;
}

// The page was fetched over plain HTTP/1.1 (what makes six the limit).
async function assertHttp1(tab) {
  const protocol = await tab.page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
  if (protocol !== "http/1.1") throw new Error(`tab ${tab.i} loaded over ${protocol}, not plain HTTP/1.1`);
}

function assertShared(tabs, states, modes) {
  const seen = new Set();
  states.forEach((sockets, j) =>
    sockets.forEach((s, k) => {
      if (s.shared === null || s.shared === "undefined" || typeof s.shared !== "object") {
        throw new Error(`tab ${tabs[j].i} socket ${k}: shared is ${JSON.stringify(s.shared)}, not the channel it is on`);
      }
      if (!modes.includes(s.shared.mode)) throw new Error(`tab ${tabs[j].i} socket ${k}: shared.mode ${JSON.stringify(s.shared.mode)}, expected one of ${modes}`);
      if (!BRIDGED.includes(s.transport)) throw new Error(`tab ${tabs[j].i} socket ${k}: transport ${s.transport}`);
      seen.add(JSON.stringify([s.shared.mode, s.shared.channel]));
    }),
  );
  if (seen.size !== 1) throw new Error(`the sockets are on ${seen.size} channels, expected one: ${[...seen].slice(0, 4)}`);
  return JSON.parse([...seen][0])[0];
}

function assertEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e.slice(0, 400)}, got ${a.slice(0, 400)}`);
}

// ------------------------------------------------------------------ checks

// The 12-tab run of the first check, also the control's: 12 tabs x 2
// sockets, each sending `count` per socket; every socket must get each
// tab's messages of its room in order, once. Throws Wedged when the profile
// stops making progress.
async function twelveTabs(browser, where, { share, count }) {
  const me = await profile(browser, { share });
  try {
    const t = tag("twelve");
    const rooms = [`${t}-a`, `${t}-b`];
    const deadline = Date.now() + OPEN_WITHIN_MS;
    const tabs = await openTabs(me, where.url, 12, rooms, deadline);
    const states = await until(tabs, "24 sockets open", (st) => st.flat().every((s) => s.opened), deadline);
    await assertHttp1(tabs[0]);
    const mode = assertShared(tabs, states, ["worker"]);
    const onProxy = await assertMetrics(where.metrics, { wsbridge_channels_active: 1, wsbridge_channel_sessions: 24 }, "24 sockets of one profile");

    const started = Date.now();
    await sendAll(tabs, 0, count);
    const each = 12 * count;
    await until(tabs, `${each} messages on each of the 24 sockets`, (st) => st.flat().every((s) => s.received >= each), Date.now() + DELIVER_WITHIN_MS);
    const deliveredMs = Date.now() - started;
    await sleep(SETTLE_MS);
    const all = Object.fromEntries(tabs.map((t) => [String(t.i), count]));
    await checkAll(tabs, () => all);
    if (me.errors.length) throw new Error("page errors: " + me.errors.join("; "));
    return { mode, metrics: onProxy, messages_per_socket: each, delivered_ms: deliveredMs };
  } finally {
    await me.close();
  }
}

// 12 tabs of one profile, 2 sockets each: one channel on the proxy with all
// 24 sessions, and every message where it belongs, in order, once.
check("twelve_tabs_share_one_channel", 45000, (browser) => twelveTabs(browser, SETUP.tabs, { count: 30 }));

// Without SharedWorker a leader tab holds the channel (Web Locks elect it,
// BroadcastChannel links the others). Closing it mid-stream must lose and
// double nothing for the other 11, which go on sending.
check("leader_tab_closed_mid_stream", 60000, async (browser) => {
  const me = await profile(browser, { noSharedWorker: true });
  try {
    const t = tag("leader");
    const rooms = [`${t}-a`, `${t}-b`];
    const deadline = Date.now() + OPEN_WITHIN_MS;
    const tabs = await openTabs(me, SETUP.leader.url, 12, rooms, deadline);
    const states = await until(tabs, "24 sockets open", (st) => st.flat().every((s) => s.opened), deadline);
    const mode = assertShared(tabs, states, ["tabs"]);
    await assertMetrics(SETUP.leader.metrics, { wsbridge_channels_active: 1, wsbridge_channel_sessions: 24 }, "24 sockets of one profile");
    // The leader is the one tab that makes the channel's requests.
    const leaders = tabs.filter((x) => x.channelRequests > 0);
    if (leaders.length !== 1) throw new Error(`${leaders.length} tabs made channel requests (${leaders.map((x) => x.i)}), expected one leader`);
    const [leader] = leaders;
    const others = tabs.filter((x) => x !== leader);
    for (const x of others) x.channelRequests = 0;

    // Phase 1, paced so that the close lands mid-stream: each socket of
    // every tab sends one message every 30 ms; the leader closes while it
    // is still sending, once the others have heard from everyone.
    // Long enough that the leader is still sending when the others have
    // heard from everyone, however slow the first deliveries are.
    const phase1 = 150;
    const phase2 = 10;
    await sendPaced(tabs, 0, phase1, 30);
    await until(others, "the first messages", (st) => st.flat().every((s) => s.received >= 12), Date.now() + DELIVER_WITHIN_MS);
    while ((await leader.page.evaluate(() => window.paced)) < 20) await sleep(20);
    const sentByLeader = await leader.page.evaluate(() => window.paced);
    if (sentByLeader >= phase1) throw new Error("the leader had sent everything before it could be closed mid-stream");
    await leader.page.close({ runBeforeUnload: false });
    leader.closed = true;
    const closedAt = Date.now();

    // The others finish phase 1, then keep sending: phase 2.
    const pacedDone = async () => (await Promise.all(others.map((x) => x.page.evaluate(() => window.paced)))).every((n) => n === phase1);
    while (!(await pacedDone())) {
      if (Date.now() - closedAt > DELIVER_WITHIN_MS) throw new Wedged("the other tabs' sends stalled after the leader closed");
      await sleep(100);
    }
    await sendAll(others, phase1, phase1 + phase2);
    const each = 11 * (phase1 + phase2);
    // The leader's own messages are any gap-free start: what it had sent
    // when it went away, as far as the backend got them.
    const expect = Object.fromEntries(others.map((x) => [String(x.i), phase1 + phase2]));
    expect[String(leader.i)] = "prefix";
    await until(others, `${each} messages from the other 11 on each socket`, (st) => st.flat().every((s) => s.received >= each), Date.now() + DELIVER_WITHIN_MS);
    const recoveredMs = Date.now() - closedAt;
    await sleep(SETTLE_MS);
    const counts = await checkAll(others, () => expect);
    // Every member of a room heard the leader say the same.
    for (const k of [0, 1]) {
      const fromLeader = new Set(counts.filter((c) => c.k === k).map((c) => c.got.get(String(leader.i)) || 0));
      if (fromLeader.size !== 1) throw new Error(`room ${k}: the others heard different numbers of the leader's messages: ${[...fromLeader]}`);
    }
    const after = await Promise.all(others.map(readTab));
    assertShared(others, after, ["tabs"]);
    // One of the others took over the channel's requests.
    const successors = others.filter((x) => x.channelRequests > 0);
    if (successors.length !== 1) throw new Error(`after the leader closed, ${successors.length} tabs made channel requests (${successors.map((x) => x.i)}), expected one new leader`);
    // The closed tab's two sockets closed; the 22 others live on.
    const sessions = await metricsSettle(SETUP.leader.metrics, { wsbridge_sessions_active: 22 }, 10000);
    if (!sessions.ok) {
      const m = await metrics(SETUP.leader.metrics);
      const more = ["wsbridge_sessions_closed_total", "wsbridge_sessions_lingering", "wsbridge_channels_active", "wsbridge_channel_sessions"].map((k) => `${k} ${m[k]}`).join(", ");
      throw new Error(`after the leader tab closed: ${JSON.stringify(sessions.shown)} open sessions, expected 22 (its own two closed); ${more}`);
    }
    // The new hub ended the dead hub's channel: one channel, the 22 on it.
    const channels = await metricsSettle(SETUP.leader.metrics, { wsbridge_channels_active: 1, wsbridge_channel_sessions: 22 }, 10000);
    if (!channels.ok) throw new Error(`after the takeover the proxy shows ${JSON.stringify(channels.shown)}, expected one channel with the 22 live sessions on it`);
    const onProxy = await metrics(SETUP.leader.metrics);
    if (me.errors.length) throw new Error("page errors: " + me.errors.join("; "));
    return {
      mode,
      leader: leader.i,
      new_leader: successors[0].i,
      leader_sent_before_close: sentByLeader,
      recovered_ms: recoveredMs,
      shared_after: after[0][0].shared,
      channels_active: onProxy.wsbridge_channels_active,
      channel_sessions: onProxy.wsbridge_channel_sessions,
    };
  } finally {
    await me.close();
  }
});

// 4 tabs on one channel through a relay that cuts every connection every
// 300 ms: messages both ways (the room echoes each to every member), none
// lost, doubled or reordered.
check("four_tabs_behind_a_flaky_network", 60000, async (browser) => {
  const me = await profile(browser);
  try {
    const t = tag("flaky");
    const rooms = [`${t}-a`, `${t}-b`];
    const deadline = Date.now() + OPEN_WITHIN_MS;
    const tabs = await openTabs(me, SETUP.flaky.url, 4, rooms, deadline);
    const states = await until(tabs, "8 sockets open", (st) => st.flat().every((s) => s.opened), deadline);
    const mode = assertShared(tabs, states, ["worker"]);
    await assertMetrics(SETUP.flaky.metrics, { wsbridge_channels_active: 1, wsbridge_channel_sessions: 8 }, "8 sockets of one profile");
    // Paced over about 4 s, so the relay cuts the channel's reader and its
    // sends a dozen times on the way.
    const count = 150;
    await relayChaos(true);
    const started = Date.now();
    try {
      await sendPaced(tabs, 0, count, 25);
      await until(tabs, `${4 * count} messages on each of the 8 sockets`, (st) => st.flat().every((s) => s.received >= 4 * count), Date.now() + 40000);
    } finally {
      await relayChaos(false);
    }
    const ms = Date.now() - started;
    await sleep(SETTLE_MS);
    const all = Object.fromEntries(tabs.map((x) => [String(x.i), count]));
    await checkAll(tabs, () => all);
    const onProxy = await metrics(SETUP.flaky.metrics);
    if (me.errors.length) throw new Error("page errors: " + me.errors.join("; "));
    return { mode, ms, channels_active: onProxy.wsbridge_channels_active, channel_sessions: onProxy.wsbridge_channel_sessions };
  } finally {
    await relayChaos(false);
    await me.close();
  }
});

// A tab too busy to take its events (a long task) must not stall another
// tab on the same channel: backpressure is per session. Tab 1 blocks its
// event loop while tab 0 sends more messages than the hub keeps for a tab
// (so tab 1's session is detached from the channel and its events wait in
// the proxy); tab 0 gets all of them back while tab 1 is still blocked,
// and tab 1 gets every one, in order, once, when it is free again.
check("a_busy_tab_does_not_stall_the_others", 60000, async (browser) => {
  const me = await profile(browser);
  try {
    const room = tag("busy");
    const deadline = Date.now() + OPEN_WITHIN_MS;
    const tabs = await openTabs(me, SETUP.tabs.url, 2, [room], deadline);
    const states = await until(tabs, "2 sockets open", (st) => st.flat().every((s) => s.opened), deadline);
    const mode = assertShared(tabs, states, ["worker"]);
    const [free, busy] = tabs;
    const count = 1500; // above the hub's 1024 events kept for a tab
    const blockMs = 10000;
    let busyUntil = 0;
    const blocked = busy.page
      .evaluate((ms) => {
        const t = Date.now();
        while (Date.now() - t < ms);
      }, blockMs)
      .then(() => (busyUntil = Date.now()));
    await sleep(200); // the busy tab is in its long task
    await sendAll([free], 0, count);
    await until([free], `${count} messages back in the free tab`, (st) => st[0][0].received >= count, Date.now() + blockMs);
    const freeDone = Date.now();
    if (busyUntil) throw new Error("the busy tab was free again before the other tab had its messages: nothing shows it did not stall them");
    await blocked;
    await until(tabs, `${count} messages in both tabs`, (st) => st.flat().every((s) => s.received >= count), Date.now() + DELIVER_WITHIN_MS);
    await sleep(SETTLE_MS);
    await checkAll(tabs, () => ({ [String(free.i)]: count }));
    if (me.errors.length) throw new Error("page errors: " + me.errors.join("; "));
    return { mode, free_tab_done_ms_before_busy_tab_free: busyUntil - freeDone };
  } finally {
    await me.close();
  }
});

// A channel that ends under its sockets (it expired, the proxy restarted:
// here a DELETE) is replaced: every socket goes on from its cursor on a new
// channel, losing and doubling nothing.
check("an_ended_channel_is_replaced", 45000, async (browser) => {
  const me = await profile(browser);
  try {
    const rooms = [tag("renew-a"), tag("renew-b")];
    const deadline = Date.now() + OPEN_WITHIN_MS;
    const tabs = await openTabs(me, SETUP.tabs.url, 2, rooms, deadline);
    const states = await until(tabs, "4 sockets open", (st) => st.flat().every((s) => s.opened), deadline);
    assertShared(tabs, states, ["worker"]);
    const before = states[0][0].shared.channel;
    await sendAll(tabs, 0, 20);
    await until(tabs, "the first 40 messages on each socket", (st) => st.flat().every((s) => s.received >= 40), Date.now() + DELIVER_WITHIN_MS);
    const status = await tabs[0].page.evaluate(async (id) => (await fetch(`/_bridge/channels/${id}`, { method: "DELETE" })).status, before);
    if (status !== 204) throw new Error(`DELETE of the channel answered ${status}, not 204`);
    await sendAll(tabs, 20, 40);
    const after = await until(tabs, "all 80 messages on each socket", (st) => st.flat().every((s) => s.received >= 80), Date.now() + DELIVER_WITHIN_MS);
    await sleep(SETTLE_MS);
    await checkAll(tabs, () => Object.fromEntries(tabs.map((x) => [String(x.i), 40])));
    const channel = assertShared(tabs, after, ["worker"]) && after[0][0].shared.channel;
    if (channel === before) throw new Error("the sockets still name the ended channel");
    if (me.errors.length) throw new Error("page errors: " + me.errors.join("; "));
    return { before, after: channel };
  } finally {
    await me.close();
  }
});

// The demo chat as 12 people in 12 tabs of one browser would use it: every
// tab connects over plain HTTP/1.1, says where it is and that it shares one
// connection, and everyone sees everyone's message. Saves a screenshot.
check("demo_chat_in_twelve_tabs", 60000, async (browser) => {
  const me = await profile(browser, { viewport: { width: 900, height: 640 } });
  try {
    const deadline = Date.now() + OPEN_WITHIN_MS;
    const pages = [];
    for (let i = 0; i < 12; i++) {
      const page = await me.context.newPage();
      page.on("pageerror", (e) => me.errors.push(`tab ${i}: ${e.message}`));
      try {
        await page.goto(`${SETUP.demo.url}/?nick=tab-${i}`, { waitUntil: "domcontentloaded", timeout: Math.max(1, deadline - Date.now()) });
      } catch (e) {
        throw new Wedged(`demo tab ${i} did not load: ${String(e.message).split("\n")[0]}`);
      }
      pages.push(page);
    }
    const shown = [];
    for (const [i, page] of pages.entries()) {
      try {
        await page.waitForFunction(
          () => document.querySelector("#state").dataset.state === "open" && document.querySelector("#transport").textContent.trim() !== "-" && document.querySelector("#shared").textContent.trim() !== "",
          null,
          { timeout: Math.max(1, deadline - Date.now()) },
        );
      } catch {
        throw new Wedged(`demo tab ${i} never showed open with a transport and its sharing line`);
      }
      shown.push(
        await page.evaluate(() => ({
          transport: document.querySelector("#transport").textContent.trim(),
          policy: document.querySelector("#policy").textContent,
          reason: document.querySelector("#reason").textContent,
          shared: document.querySelector("#shared").textContent,
          protocol: performance.getEntriesByType("navigation")[0].nextHopProtocol,
        })),
      );
    }
    for (const [i, s] of shown.entries()) {
      if (!BRIDGED.includes(s.transport)) throw new Error(`demo tab ${i} on ${s.transport}`);
      if (s.protocol !== "http/1.1") throw new Error(`demo tab ${i} loaded over ${s.protocol}`);
      if (!/WebSocket upgrades are refused on \/ws by configuration/.test(s.policy)) throw new Error(`demo tab ${i} #policy: ${s.policy}`);
      if (!s.reason.startsWith(`This page is on ${s.transport}: `)) throw new Error(`demo tab ${i} #reason: ${s.reason}`);
      if (!/^Sharing one connection through a SharedWorker/.test(s.shared)) throw new Error(`demo tab ${i} #shared: ${s.shared}`);
    }
    // Each tab counts the others on its connection (they say hello).
    for (const [i, page] of pages.entries()) {
      try {
        await page.waitForFunction(() => / with 11 other tabs of this browser \(12 sockets\)\.$/.test(document.querySelector("#shared").textContent), null, { timeout: 5000 });
      } catch {
        throw new Error(`demo tab ${i} #shared: ${await page.locator("#shared").textContent()}`);
      }
    }
    const onProxy = await assertMetrics(SETUP.demo.metrics, { wsbridge_channels_active: 1, wsbridge_channel_sessions: 12 }, "12 demo tabs");

    // Everyone says hello through the form; everyone sees all 12.
    for (const [i, page] of pages.entries()) {
      await page.fill("#input", `hello from tab-${i}`);
      await page.click("#send");
    }
    const hellos = () => [...document.querySelectorAll("#messages li")].map((li) => li.textContent).filter((t) => /hello from tab-\d+$/.test(t));
    const everyone = Array.from({ length: 12 }, (_, j) => `tab-${j}hello from tab-${j}`).sort();
    const heard = Date.now() + DELIVER_WITHIN_MS;
    for (const [i, page] of pages.entries()) {
      try {
        await page.waitForFunction(`(${hellos})().length >= 12`, null, { timeout: Math.max(1, heard - Date.now()) });
      } catch {
        throw new Wedged(`demo tab ${i} shows only ${JSON.stringify(await page.evaluate(hellos))}`);
      }
      // Each line is the sender's nick, then its text: all 12, once each.
      const lines = (await page.evaluate(hellos)).sort();
      assertEqual(lines, everyone, `the hellos demo tab ${i} shows`);
    }
    await pages[0].bringToFront();
    if (SETUP.screenshot) await pages[0].screenshot({ path: SETUP.screenshot });
    if (me.errors.length) throw new Error("page errors: " + me.errors.join("; "));
    return { transport: shown[0].transport, reason: shown[0].reason, shared: await pages[0].locator("#shared").textContent(), metrics: onProxy };
  } finally {
    await me.close();
  }
});

// The control: the first check's 12 tabs with every socket opting out
// (share: false), one reader each. Over HTTP/1.1 a profile has six
// connections per host; 24 readers cannot fit, and the run must wedge.
// If it did not, the first check would prove nothing about sharing.
check("twelve_tabs_without_sharing_wedge", 45000, async (browser) => {
  try {
    const info = await twelveTabs(browser, SETUP.unshared, { share: false, count: 30 });
    throw new Error("12 tabs without sharing did not wedge: " + JSON.stringify(info));
  } catch (e) {
    if (!(e instanceof Wedged)) throw e;
    return { wedged: e.message.slice(0, 300) };
  }
});

function relayChaos(on) {
  const [host, port] = SETUP.relay_control.split(":");
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), host, () => socket.end(on ? "1" : "0"));
    socket.on("close", resolve);
    socket.on("error", reject);
  });
}

// -------------------------------------------------------------------- main

await runChecks("sharing");
