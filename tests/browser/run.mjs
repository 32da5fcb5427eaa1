// Real-Chromium checks of the wsbridge JavaScript client, driven by
// tests/browser.rs, which starts the echo backend, the proxy and a flaky TCP
// relay and passes their addresses in the environment:
//
//   WSB_PROXY          http://127.0.0.1:P   the proxy (pages are same-origin with it)
//   WSB_RELAY          http://127.0.0.1:R   the proxy behind a relay that cuts connections
//   WSB_RELAY_CONTROL  127.0.0.1:C          write "1" to start cutting, "0" to stop,
//                                           "f" to freeze the open connections
//   WSB_GAPPY          http://127.0.0.1:G   a proxy that drops undelivered events (gaps)
//   WSB_INJECT         http://127.0.0.1:I   the proxy with client.inject = true
//   WSB_DEMO           http://127.0.0.1:D   the example chat app behind a proxy set up
//                                           like examples/demo.rs
//   WSB_DEMO_CLUSTER   optional: the same demo through three [cluster] replicas
//                                           behind HAProxy round-robin, no stickiness
//   WSB_SCREENSHOT     where demo_chat saves its screenshot (a .png path)
//   WSB_CHROMIUM       the browser binary (default /usr/bin/chromium)
//   WSB_NGINX          optional: http://127.0.0.1:N, a real nginx in front of WSB_PROXY
//                      set up as a buffering firewall (examples/bench/nginx.rs);
//                      unset, the nginx checks do not run (tests/browser.rs
//                      fails under CI=true instead)
//   WSB_ONLY           optional: run only the checks whose name contains this
//
// Prints one JSON line per check ({"check", "ok", "ms", "error"?}) and exits
// non-zero when any check failed. Run by hand (after `npm ci --prefix
// tests/browser`): `cargo test --test browser -- --nocapture`.

import net from "node:net";

import { check, runChecks } from "./checks.mjs";

const PROXY = required("WSB_PROXY");
const RELAY = required("WSB_RELAY");
const RELAY_CONTROL = required("WSB_RELAY_CONTROL");
const GAPPY = required("WSB_GAPPY");
const INJECT = required("WSB_INJECT");
const DEMO = required("WSB_DEMO");
// Optional: the demo through three [cluster] replicas behind HAProxy.
const DEMO_CLUSTER = process.env.WSB_DEMO_CLUSTER || "";
const SCREENSHOT = required("WSB_SCREENSHOT");
const NGINX = process.env.WSB_NGINX || "";
const BRIDGED = ["sse", "stream", "poll"];
const FLAKY_MESSAGES = 2000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`run.mjs: ${name} is not set (run through cargo test --test browser)`);
    process.exit(2);
  }
  return value;
}

// Helpers installed into each page; they run in the browser.
function pageHelpers() {
  const T = {
    wsUrl: (path) => location.origin.replace(/^http/, "ws") + path,

    // Records everything a socket reports, so checks can await it.
    watch(socket) {
      socket.__inbox = [];
      socket.__errors = [];
      socket.__waiters = [];
      socket.__close = null;
      socket.addEventListener("message", (e) => {
        socket.__inbox.push(e.data);
        for (const w of socket.__waiters.splice(0)) w();
      });
      socket.addEventListener("error", (e) => {
        socket.__errors.push(e.message || "error");
      });
      socket.addEventListener("close", (e) => {
        socket.__close = { code: e.code, reason: e.reason, wasClean: e.wasClean, isCloseEvent: e instanceof CloseEvent };
        for (const w of socket.__waiters.splice(0)) w();
      });
      return socket;
    },

    // Resolves with the socket once open; rejects on close or timeout.
    open(path, options, protocols) {
      const socket = T.watch(new WsBridge.BridgeSocket(T.wsUrl(path), protocols, options));
      return T.opened(socket);
    },

    opened(socket, timeoutMs = 10000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no open within " + timeoutMs + "ms")), timeoutMs);
        socket.addEventListener("open", () => {
          clearTimeout(timer);
          resolve(socket);
        });
        socket.addEventListener("close", (e) => {
          clearTimeout(timer);
          reject(new Error(`closed before open: ${e.code} ${e.reason} [${socket.__errors.join(" | ")}]`));
        });
      });
    },

    // Waits until `count` messages are in the inbox (or the socket closed).
    async messages(socket, count, timeoutMs = 10000) {
      const deadline = Date.now() + timeoutMs;
      while (socket.__inbox.length < count) {
        if (socket.__close) throw new Error(`closed after ${socket.__inbox.length}/${count} messages: ${JSON.stringify(socket.__close)} [${socket.__errors.join(" | ")}]`);
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`${socket.__inbox.length}/${count} messages after ${timeoutMs}ms`);
        await new Promise((resolve) => {
          socket.__waiters.push(resolve);
          setTimeout(resolve, Math.min(left, 500));
        });
      }
      return socket.__inbox.splice(0, count);
    },

    async closed(socket, timeoutMs = 10000) {
      const deadline = Date.now() + timeoutMs;
      while (!socket.__close) {
        if (Date.now() > deadline) throw new Error("no close event within " + timeoutMs + "ms");
        await new Promise((resolve) => {
          socket.__waiters.push(resolve);
          setTimeout(resolve, 200);
        });
      }
      return socket.__close;
    },

    // Message data as a plain array of byte values, whatever its type.
    async bytes(data) {
      if (typeof data === "string") throw new Error("expected binary, got text " + JSON.stringify(data));
      const buffer = data instanceof Blob ? await data.arrayBuffer() : data;
      if (!(buffer instanceof ArrayBuffer)) throw new Error("not an ArrayBuffer: " + Object.prototype.toString.call(data));
      return Array.from(new Uint8Array(buffer));
    },

    // The frames the backend received under `tag`. The page's close event
    // may come before the backend has read the close frame (the proxy
    // confirms the close as it forwards it), so wait for that frame.
    async backendLog(tag, timeoutMs = 3000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const response = await fetch("/log?tag=" + encodeURIComponent(tag));
        const log = await response.json();
        if (log.some((f) => f.type === "close") || Date.now() > deadline) return log;
        await new Promise((r) => setTimeout(r, 50));
      }
    },
  };
  window.T = T;
}

// Texts that stress each transport's framing: SSE line endings above all.
const EXOTIC_TEXTS = ["\r", "\r\n", "a\rb", "\n\n", "\n", "", "\u0000", "nul\u0000in\u0000side", "😀𝄞", "\ufeffbom", "x".repeat(70000), "data: fake\n\nid: 9\n"];

function allBytes() {
  return Array.from({ length: 256 }, (_, i) => i);
}

// ------------------------------------------------------------------ checks

function tag(name) {
  return `${name}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
}

async function freshPage(browser, origin = PROXY) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[page error] ${e.message}`));
  await page.goto(origin + "/");
  await page.evaluate(pageHelpers);
  return { page, done: () => context.close() };
}

// JSON with sorted keys, so objects compare by content (serde_json sorts).
function canonical(value) {
  return JSON.stringify(value, (_, v) =>
    v && typeof v === "object" && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1))) : v,
  );
}

function assertEqual(actual, expected, what) {
  const a = String(canonical(actual));
  const e = String(canonical(expected));
  if (a !== e) throw new Error(`${what}: expected ${e.slice(0, 300)}, got ${a.slice(0, 300)}`);
}

check("client_files_served", 10000, async (browser) => {
  const { page, done } = await freshPage(browser);
  try {
    const result = await page.evaluate(async () => {
      const mod = await import("/_bridge/client.mjs");
      const classic = await fetch("/_bridge/client.js");
      return {
        moduleExports: Object.keys(mod).sort(),
        version: WsBridge.version,
        sameVersion: mod.version === WsBridge.version,
        type: classic.headers.get("content-type"),
        etag: classic.headers.get("etag"),
      };
    });
    assertEqual(result.moduleExports, ["BridgeSocket", "default", "installWebSocketShim", "version"], "client.mjs exports");
    if (!result.sameVersion || !/^\d+\.\d+\.\d+/.test(result.version)) throw new Error("version: " + JSON.stringify(result));
    if (!/^text\/javascript/.test(result.type || "")) throw new Error("content-type: " + result.type);
    if (!/^"[^"]+"$/.test(result.etag || "")) throw new Error("etag: " + result.etag);
  } finally {
    await done();
  }
});

check("fallback_to_sse_when_websocket_refused", 15000, async (browser) => {
  const { page, done } = await freshPage(browser);
  try {
    const result = await page.evaluate(async () => {
      const started = performance.now();
      const socket = await T.open("/ws?tag=fallback");
      socket.send("hello");
      const [echo] = await T.messages(socket, 1, 5000);
      const ms = performance.now() - started;
      socket.close();
      await T.closed(socket);
      return { transport: socket.transport, echo, ms, protocol: socket.protocol, url: socket.url };
    });
    assertEqual(result.transport, "sse", "transport");
    assertEqual(result.echo, "hello", "echo");
    if (result.ms > 2500) throw new Error(`usable after ${Math.round(result.ms)}ms, expected about 2s at most`);
    return { ms_to_first_echo: Math.round(result.ms) };
  } finally {
    await done();
  }
});

for (const transport of ["websocket", ...BRIDGED]) {
  check(`echo_${transport}`, 20000, async (browser) => {
    const { page, done } = await freshPage(browser);
    try {
      const result = await page.evaluate(
        async ({ transport }) => {
          // /open allows a real WebSocket; /ws does not.
          const socket = await T.open(transport === "websocket" ? "/open?tag=echo" : "/ws?tag=echo", { transports: [transport] });
          socket.binaryType = "arraybuffer";
          const texts = Array.from({ length: 50 }, (_, i) => `message ${i}`);
          for (const text of texts) socket.send(text);
          socket.send(new Uint8Array([1, 2, 3]));
          const got = await T.messages(socket, texts.length + 1);
          const binary = await T.bytes(got.pop());
          // An echo can overtake the 204 that acknowledges its send, so
          // bufferedAmount reaches 0 soon after, not necessarily already.
          for (let i = 0; i < 50 && socket.bufferedAmount; i++) await new Promise((r) => setTimeout(r, 20));
          const buffered = socket.bufferedAmount;
          // With no code a real WebSocket reports 1005; ask for 1000 explicitly.
          socket.close(1000);
          const close = await T.closed(socket);
          return { transport: socket.transport, inOrder: JSON.stringify(got) === JSON.stringify(texts), binary, close, buffered, errors: socket.__errors };
        },
        { transport },
      );
      assertEqual(result.transport, transport, "transport");
      if (!result.inOrder) throw new Error("echoes out of order or altered");
      assertEqual(result.binary, [1, 2, 3], "binary echo");
      assertEqual(result.buffered, 0, "bufferedAmount after all echoes");
      assertEqual(result.close.code, 1000, "close code");
      assertEqual(result.close.wasClean, true, "wasClean");
      assertEqual(result.errors, [], "error events");
    } finally {
      await done();
    }
  });
}

for (const transport of BRIDGED) {
  check(`exotic_frames_${transport}`, 30000, async (browser) => {
    const { page, done } = await freshPage(browser);
    try {
      const t = tag("exotic");
      const result = await page.evaluate(
        async ({ transport, texts, t }) => {
          const socket = await T.open(`/ws?tag=${t}`, { transports: [transport] });
          const bytes = Array.from({ length: 256 }, (_, i) => i);
          for (const text of texts) socket.send(text);
          const echoedTexts = await T.messages(socket, texts.length);

          // Binary both ways, in each binaryType, sent as each kind of value.
          const received = {};
          socket.binaryType = "arraybuffer";
          socket.send(new Uint8Array(bytes).buffer);
          const [asBuffer] = await T.messages(socket, 1);
          received.arraybuffer = { kind: Object.prototype.toString.call(asBuffer), bytes: await T.bytes(asBuffer) };
          socket.binaryType = "blob";
          // A view into the middle of a larger buffer: only the view is sent.
          const padded = new Uint8Array(258);
          padded.set(bytes, 1);
          socket.send(new Uint8Array(padded.buffer, 1, 256));
          socket.send(new Blob([new Uint8Array(bytes)]));
          socket.send("after the blob"); // a Blob is read asynchronously; order must hold
          const [asBlob, fromBlob, after] = await T.messages(socket, 3);
          received.blob = { kind: Object.prototype.toString.call(asBlob), bytes: await T.bytes(asBlob) };
          received.fromBlob = await T.bytes(fromBlob);
          received.after = after;
          socket.close(1000, "done");
          const close = await T.closed(socket);
          return { echoedTexts, received, close, errors: socket.__errors, log: await T.backendLog(t) };
        },
        { transport, texts: EXOTIC_TEXTS, t },
      );
      for (let i = 0; i < EXOTIC_TEXTS.length; i++) {
        assertEqual(result.echoedTexts[i], EXOTIC_TEXTS[i], `text ${i} echoed through ${transport}`);
      }
      assertEqual(result.received.arraybuffer, { kind: "[object ArrayBuffer]", bytes: allBytes() }, "binary as arraybuffer");
      assertEqual(result.received.blob, { kind: "[object Blob]", bytes: allBytes() }, "binary as blob");
      assertEqual(result.received.fromBlob, allBytes(), "binary sent as a Blob");
      assertEqual(result.received.after, "after the blob", "text after a Blob");
      // What the backend itself got: the upstream direction alone.
      const b64 = Buffer.from(allBytes()).toString("base64");
      const expected = [
        ...EXOTIC_TEXTS.map((data) => ({ type: "text", data })),
        { type: "binary", data: b64 },
        { type: "binary", data: b64 },
        { type: "binary", data: b64 },
        { type: "text", data: "after the blob" },
        { type: "close", code: 1000, reason: "done" },
      ];
      assertEqual(result.log, expected, "frames the backend received");
      assertEqual(result.errors, [], "error events");
    } finally {
      await done();
    }
  });
}

for (const transport of BRIDGED) {
  check(`close_codes_${transport}`, 20000, async (browser) => {
    const { page, done } = await freshPage(browser);
    try {
      const t = tag("close");
      const result = await page.evaluate(
        async ({ transport, t }) => {
          // The page closes.
          const mine = await T.open(`/ws?tag=${t}`, { transports: [transport] });
          let threw = [];
          for (const [code, reason] of [[1001, ""], [2999, ""], [5000, ""], [4001, "x".repeat(124)]]) {
            try {
              mine.close(code, reason);
            } catch (e) {
              threw.push(e.name);
            }
          }
          mine.close(4001, "bye");
          const closingState = mine.readyState;
          const pageClose = await T.closed(mine);
          const log = await T.backendLog(t);

          // The server closes.
          const theirs = await T.open(`/ws?tag=${t}-srv`, { transports: [transport] });
          theirs.send("close:4002:srv");
          const serverClose = await T.closed(theirs);
          // close() after the end is a no-op, and onclose fired exactly once.
          theirs.close();
          await new Promise((r) => setTimeout(r, 200));
          return { threw, closingState, pageClose, log, serverClose, finalState: theirs.readyState };
        },
        { transport, t },
      );
      assertEqual(result.threw, ["InvalidAccessError", "InvalidAccessError", "InvalidAccessError", "SyntaxError"], "close() validation");
      assertEqual(result.closingState, 2, "readyState right after close()");
      assertEqual(result.pageClose, { code: 4001, reason: "bye", wasClean: true, isCloseEvent: true }, "page's close event");
      assertEqual(result.log.at(-1), { type: "close", code: 4001, reason: "bye" }, "close the backend saw");
      assertEqual(result.serverClose, { code: 4002, reason: "srv", wasClean: true, isCloseEvent: true }, "server's close as seen by the page");
      assertEqual(result.finalState, 3, "readyState after close");
    } finally {
      await done();
    }
  });
}

check("websocket_api_semantics", 20000, async (browser) => {
  const { page, done } = await freshPage(browser);
  try {
    const r = await page.evaluate(async () => {
      const out = {};
      const { BridgeSocket } = WsBridge;
      out.constants = [BridgeSocket.CONNECTING, BridgeSocket.OPEN, BridgeSocket.CLOSING, BridgeSocket.CLOSED];
      out.badUrls = [];
      for (const url of ["ftp://x/", "ws://x/#frag", "ws://[bad/"]) {
        try {
          new BridgeSocket(url);
          out.badUrls.push("accepted");
        } catch (e) {
          out.badUrls.push(e.name);
        }
      }

      // send() while connecting throws; close() while connecting fails the
      // attempt with error, then close 1006, once.
      const early = T.watch(new BridgeSocket(T.wsUrl("/ws?tag=early")));
      out.initial = { readyState: early.readyState, url: early.url, binaryType: early.binaryType, extensions: early.extensions };
      try {
        early.send("too soon");
      } catch (e) {
        out.sendWhileConnecting = e.name;
      }
      let closes = 0;
      early.onclose = () => closes++;
      early.close();
      out.earlyState = early.readyState;
      out.earlyClose = await T.closed(early);
      await new Promise((r) => setTimeout(r, 300));
      out.earlyCloses = closes;
      out.earlyErrors = early.__errors.length;

      // on* handlers: replacing keeps one listener, null removes it; the
      // subprotocol comes back from the upstream.
      const socket = new BridgeSocket(T.wsUrl("/ws?tag=api"), ["chat.v2", "chat.v1"], { transports: ["stream"] });
      await T.opened(T.watch(socket));
      out.protocol = socket.protocol;
      const calls = [];
      socket.onmessage = () => calls.push("first");
      socket.onmessage = () => calls.push("second");
      socket.send("one");
      await T.messages(socket, 1);
      socket.onmessage = null;
      socket.send("two");
      await T.messages(socket, 1);
      out.handlerCalls = calls;
      out.onmessageAfterNull = socket.onmessage;
      socket.close();
      out.closeWithoutCode = await T.closed(socket);
      socket.send("after close");
      out.bufferedAfterClose = socket.bufferedAmount;

      // A path no route bridges (and no WebSocket allowed): error, then 1006.
      const nowhere = T.watch(new BridgeSocket(T.wsUrl("/no-such-route")));
      out.nowhere = await T.closed(nowhere);

      // The shim can be removed again.
      const Native = window.WebSocket;
      const uninstall = WsBridge.installWebSocketShim();
      out.shimInstalled = window.WebSocket !== Native;
      uninstall();
      out.shimRemoved = window.WebSocket === Native;
      return out;
    });
    assertEqual(r.constants, [0, 1, 2, 3], "constants");
    assertEqual(r.badUrls, ["SyntaxError", "SyntaxError", "SyntaxError"], "bad URLs");
    assertEqual(r.initial.readyState, 0, "initial readyState");
    if (!/^ws:\/\/127\.0\.0\.1:\d+\/ws\?tag=early$/.test(r.initial.url)) throw new Error("url: " + r.initial.url);
    assertEqual([r.initial.binaryType, r.initial.extensions], ["blob", ""], "binaryType, extensions");
    assertEqual(r.sendWhileConnecting, "InvalidStateError", "send() while connecting");
    assertEqual(r.earlyState, 2, "readyState after close() while connecting");
    assertEqual([r.earlyClose.code, r.earlyClose.wasClean, r.earlyCloses, r.earlyErrors], [1006, false, 1, 1], "close() while connecting");
    assertEqual(r.protocol, "chat.v2", "negotiated subprotocol");
    assertEqual(r.handlerCalls, ["second"], "on* handler replaced");
    assertEqual(r.onmessageAfterNull, null, "onmessage after null");
    assertEqual([r.closeWithoutCode.code, r.closeWithoutCode.wasClean], [1000, true], "close() without a code");
    assertEqual(r.bufferedAfterClose, 11, "bufferedAmount counts sends after close");
    assertEqual([r.nowhere.code, r.nowhere.wasClean], [1006, false], "unknown route");
    assertEqual([r.shimInstalled, r.shimRemoved], [true, true], "shim install/uninstall");
  } finally {
    await done();
  }
});

// A route that names SSE events after a JSON field (for pages using raw
// EventSource): the client must still deliver every frame, in order.
check("sse_event_field_route", 20000, async (browser) => {
  const { page, done } = await freshPage(browser);
  try {
    const r = await page.evaluate(async () => {
      const frames = ['{"type":"chat","n":1}', '{"type":"chat","n":2}', "plain", '{"type":"x y"}', '{"type":"chat","n":3}', "last plain"];
      const socket = await T.open("/named?tag=named", { transports: ["sse", "stream"] });
      for (const f of frames) socket.send(f);
      const got = await T.messages(socket, frames.length);
      const viaSse = socket.transport;
      // A named frame with nothing after it: delivered at once only when the
      // proxy honours plain=1 (else it waits for the next event).
      socket.send('{"type":"chat","n":4}');
      let lastNamed = true;
      try {
        await T.messages(socket, 1, 3000);
      } catch {
        lastNamed = false;
      }
      socket.close();
      return { ok: JSON.stringify(got) === JSON.stringify(frames), got, transport: viaSse, lastNamed };
    });
    if (!r.ok) throw new Error("frames lost or reordered: " + JSON.stringify(r.got));
    return { transport: r.transport, last_named_frame_delivered_at_once: r.lastNamed };
  } finally {
    await done();
  }
});

check("upstream_rejection_fails_fast", 15000, async (browser) => {
  const { page, done } = await freshPage(browser);
  try {
    const result = await page.evaluate(async () => {
      const started = performance.now();
      const socket = T.watch(new WsBridge.BridgeSocket(T.wsUrl("/deny")));
      let opened = false;
      socket.onopen = () => (opened = true);
      const close = await T.closed(socket);
      return { close, opened, errors: socket.__errors.length, ms: performance.now() - started, state: socket.readyState };
    });
    assertEqual(result.opened, false, "opened");
    assertEqual({ code: result.close.code, wasClean: result.close.wasClean }, { code: 1006, wasClean: false }, "close event");
    if (result.errors < 1) throw new Error("no error event before close");
    if (result.ms > 5000) throw new Error(`took ${Math.round(result.ms)}ms`);
  } finally {
    await done();
  }
});

// ------------------------------------------------- choosing a transport

// Opens a socket on a page of `origin` that counts the page's `new
// WebSocket()` calls (/counted.html wraps the constructor before the client
// loads) and reports every transport, open, reconnecting and resumed event.
async function countedLoad(context, origin, path, options, seed) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[page error] ${e.message}`));
  await page.goto(origin + "/counted.html");
  await page.evaluate(pageHelpers);
  // What an earlier load would have left in localStorage.
  if (seed) await page.evaluate(([key, value]) => localStorage.setItem(key, value), seed);
  const result = await page.evaluate(
    async ({ path, options }) => {
      const started = performance.now();
      const socket = T.watch(new WsBridge.BridgeSocket(T.wsUrl(path), [], options));
      window.socket = socket;
      window.seen = [];
      for (const type of ["transport", "open", "reconnecting", "resumed", "close"]) {
        socket.addEventListener(type, (e) => window.seen.push({ type, state: socket.state, transport: socket.transport, detail: e.detail || null }));
      }
      await T.opened(socket, 15000);
      return { ms: performance.now() - started, transport: socket.transport, state: socket.state, constructed: window.__wsCount, seen: window.seen };
    },
    { path, options },
  );
  return { page, ...result };
}

function attemptsOf(seen) {
  const event = seen.find((e) => e.type === "transport");
  if (!event) throw new Error("no transport event: " + JSON.stringify(seen));
  return event.detail.attempts.map((a) => `${a.transport}:${a.result}`);
}

// Behind a real nginx that refuses upgrades and holds streamed bodies: the
// first load moves on within the probe window (WebSocket refused, SSE held,
// stream skipped, poll), 200 messages flow both ways in order; the next
// load in the same profile starts on poll without trying a WebSocket.
check("nginx_buffering_firewall", 60000, async (browser) => {
  if (!NGINX) return { skipped: "WSB_NGINX not set" };
  const context = await browser.newContext();
  try {
    const t = tag("nginx");
    const first = await countedLoad(context, NGINX, `/ws?tag=${t}`);
    assertEqual(first.transport, "poll", "transport on the first load");
    assertEqual(attemptsOf(first.seen), ["websocket:failed", "sse:held, no headers", "stream:skipped", "poll:open"], "attempts on the first load");
    assertEqual(first.constructed, 1, "WebSockets constructed on the first load");
    assertEqual(first.seen.slice(0, 2).map((e) => [e.type, e.state]), [["transport", "open"], ["open", "open"]], "events on open");
    const count = 200;
    const flow = await first.page.evaluate(async (count) => {
      const socket = window.socket;
      socket.send(`push:${count}:0`);
      for (let i = 0; i < count; i++) socket.send(`c:${i}`);
      const got = await T.messages(socket, 2 * count, 30000);
      const expect = (prefix) => Array.from({ length: count }, (_, i) => `${prefix}:${i}`).join(",");
      const ok = {
        echoes: got.filter((m) => m.startsWith("c:")).join(",") === expect("c"),
        pushes: got.filter((m) => m.startsWith("p:")).join(",") === expect("p"),
        total: got.length,
        errors: socket.__errors,
      };
      socket.close(1000);
      await T.closed(socket);
      return ok;
    }, count);
    assertEqual(flow, { echoes: true, pushes: true, total: 2 * count, errors: [] }, "200 messages each way through nginx");
    const log = await (await fetch(`${PROXY}/log?tag=${t}`)).json();
    const sent = log.filter((f) => f.type === "text").map((f) => f.data);
    assertEqual(sent, [`push:${count}:0`, ...Array.from({ length: count }, (_, i) => `c:${i}`)], "frames the backend received");
    const memory = await first.page.evaluate(() => Object.entries(localStorage).filter(([k]) => k.startsWith("wsbridge:transport:")));
    await first.page.close();
    assertEqual(memory.length, 1, "memory entries");
    const remembered = JSON.parse(memory[0][1]);
    assertEqual([memory[0][0], remembered.transport, remembered.websocket], [`wsbridge:transport:${NGINX}/_bridge`, "poll", "fails"], "what was remembered");

    const next = await countedLoad(context, NGINX, `/ws?tag=${t}-next`);
    assertEqual(next.transport, "poll", "transport on the next load");
    assertEqual(attemptsOf(next.seen), ["poll:open"], "attempts on the next load");
    assertEqual(next.constructed, 0, "WebSockets constructed on the next load");
    const reason = next.seen[0].detail.reason;
    if (!/remembered/.test(reason)) throw new Error("reason does not say remembered: " + reason);
    const echo = await next.page.evaluate(async () => {
      window.socket.send("again");
      const [m] = await T.messages(window.socket, 1, 10000);
      return m;
    });
    assertEqual(echo, "again", "echo on the next load");
    await next.page.close();

    // A profile that remembers SSE (say, from another network): SSE is
    // held here, so it moves on to poll and remembers that instead.
    const other = await browser.newContext();
    try {
      const key = `wsbridge:transport:${NGINX}/_bridge`;
      const stale = await countedLoad(other, NGINX, `/ws?tag=${t}-stale`, undefined, [key, JSON.stringify({ transport: "sse", websocket: "fails", at: Date.now() })]);
      assertEqual(attemptsOf(stale.seen), ["sse:held, no headers", "stream:skipped", "poll:open"], "attempts with SSE remembered");
      assertEqual(stale.constructed, 0, "WebSockets constructed with SSE remembered");
      const now = await stale.page.evaluate((key) => JSON.parse(localStorage.getItem(key)).transport, key);
      assertEqual(now, "poll", "remembered after SSE was held");
    } finally {
      await other.close();
    }
    return { first_load_ms: Math.round(first.ms), next_load_ms: Math.round(next.ms), first_reason: first.seen[0].detail.reason };
  } finally {
    await context.close();
  }
});

// A WebSocket slower than websocketTimeout that works (/slow: the backend
// answers the handshake after 2 s): this page goes on bridged, the
// handshake finishes in the background, and the next load opens on it.
check("slow_websocket_remembered", 40000, async (browser) => {
  const context = await browser.newContext();
  try {
    const first = await countedLoad(context, PROXY, "/slow?tag=slow");
    if (!BRIDGED.includes(first.transport)) throw new Error("first load not bridged: " + first.transport);
    assertEqual(attemptsOf(first.seen)[0], "websocket:timeout", "first attempt");
    // The background handshake ends about 2 s after it began.
    const memory = await first.page.evaluate(async () => {
      const key = Object.keys(localStorage).find((k) => k.startsWith("wsbridge:transport:"));
      for (let i = 0; i < 100; i++) {
        const value = JSON.parse(localStorage.getItem(key) || "{}");
        if (value.transport === "websocket") return value;
        await new Promise((r) => setTimeout(r, 100));
      }
      return JSON.parse(localStorage.getItem(key) || "{}");
    });
    assertEqual([memory.transport, memory.websocket], ["websocket", "works"], "remembered after the slow handshake");
    // The live socket was not switched.
    assertEqual(await first.page.evaluate(() => window.socket.transport), first.transport, "transport of the first page");
    await first.page.close();
    const next = await countedLoad(context, PROXY, "/slow?tag=slow-next");
    assertEqual(next.transport, "websocket", "transport on the next load");
    assertEqual(attemptsOf(next.seen), ["websocket:open"], "attempts on the next load");
    await next.page.close();
    return { first: first.transport, ws_ms: memory.wsMs };
  } finally {
    await context.close();
  }
});

// transport, open, reconnecting and resumed, in that order, with `state`;
// readyState stays OPEN throughout, and nothing is lost.
check("state_events_on_reconnect", 30000, async (browser) => {
  const context = await browser.newContext();
  try {
    const load = await countedLoad(context, RELAY, "/ws?tag=states", { transports: ["sse"] });
    await relayChaos(true);
    const during = await load.page.evaluate(async () => {
      for (let i = 0; i < 100 && !window.seen.some((e) => e.type === "reconnecting"); i++) await new Promise((r) => setTimeout(r, 50));
      return { readyState: window.socket.readyState, seen: window.seen.map((e) => e.type) };
    });
    await relayChaos(false);
    const after = await load.page.evaluate(async () => {
      const socket = window.socket;
      for (let i = 0; i < 100 && socket.state !== "open"; i++) await new Promise((r) => setTimeout(r, 50));
      socket.send("still here");
      const [echo] = await T.messages(socket, 1, 10000);
      return { echo, state: socket.state, readyState: socket.readyState, seen: window.seen.map((e) => [e.type, e.state]), last: window.seen.at(-1) };
    });
    await load.page.close();
    assertEqual(during.readyState, 1, "readyState while reconnecting");
    assertEqual(after.seen.slice(0, 3), [["transport", "open"], ["open", "open"], ["reconnecting", "reconnecting"]], "first events");
    assertEqual([after.last.type, after.last.state], ["resumed", "open"], "last event");
    assertEqual([after.echo, after.state, after.readyState], ["still here", "open", 1], "after resuming");
    if (!/resumed from event/.test(after.last.detail.reason)) throw new Error("resumed reason: " + after.last.detail.reason);
    return { events: after.seen.length };
  } finally {
    await relayChaos(false);
    await context.close();
  }
});

// A page that goes away closes its sessions with 1001 at once (a keepalive
// DELETE on pagehide), long before the proxy's idle_timeout (10 min here):
// by navigating away, and by closing the tab.
for (const how of ["navigate", "close"]) {
  check(`pagehide_closes_session_${how}`, 20000, async (browser) => {
    const context = await browser.newContext();
    try {
      const t = tag("pagehide");
      const { page } = await countedLoad(context, PROXY, `/ws?tag=${t}`);
      await page.evaluate(async () => {
        window.socket.send("hi");
        await T.messages(window.socket, 1, 5000);
      });
      if (how === "navigate") await page.goto(PROXY + "/elsewhere");
      else await page.close({ runBeforeUnload: false });
      const deadline = Date.now() + 8000;
      let log = [];
      while (Date.now() < deadline) {
        log = await (await fetch(`${PROXY}/log?tag=${t}`)).json();
        if (log.some((f) => f.type === "close")) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      assertEqual(log, [{ type: "text", data: "hi" }, { type: "close", code: 1001, reason: "" }], "frames the backend received");
    } finally {
      await context.close();
    }
  });
}

check("websocket_shim", 20000, async (browser) => {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    // The page only calls `new WebSocket(url)`; /shim.html loads client.js
    // and installs the shim in its <head>.
    await page.goto(PROXY + "/shim.html");
    const result = await page.evaluate(async () => {
      const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/ws?tag=shim");
      ws.binaryType = "arraybuffer";
      const got = [];
      const done = new Promise((resolve, reject) => {
        ws.onopen = () => {
          ws.send("via shim");
          ws.send(new Uint8Array([7, 8]));
        };
        ws.onmessage = (e) => {
          got.push(typeof e.data === "string" ? e.data : Array.from(new Uint8Array(e.data)));
          if (got.length === 2) resolve();
        };
        ws.onclose = (e) => reject(new Error("closed: " + e.code));
        setTimeout(() => reject(new Error("timeout")), 8000);
      });
      await done;
      const result = {
        transport: ws.transport,
        isWebSocket: ws instanceof WebSocket,
        constants: [WebSocket.CONNECTING, WebSocket.OPEN, WebSocket.CLOSING, WebSocket.CLOSED, ws.OPEN],
        got,
      };
      ws.close();
      // A URL on another host stays native.
      const other = new WebSocket("ws://127.0.0.2:9/");
      result.otherIsNative = !("transport" in other) && other instanceof WebSocket;
      other.onerror = () => {};
      other.close();
      return result;
    });
    assertEqual(result.transport, "sse", "transport behind the shim");
    assertEqual(result.isWebSocket, true, "instanceof WebSocket");
    assertEqual(result.constants, [0, 1, 2, 3, 1], "constants");
    assertEqual(result.got, ["via shim", [7, 8]], "echoes");
    assertEqual(result.otherIsNative, true, "other hosts use the native WebSocket");
  } finally {
    await context.close();
  }
});

// client.inject: /plain.html has never heard of wsbridge (no client script,
// only its own `new WebSocket()` to /plain, a route refusing upgrades). The
// injecting proxy makes it work over a bridged transport; the same page
// through a proxy that does not inject fails, as behind such a firewall.
check("inject_unchanged_page", 20000, async (browser) => {
  const context = await browser.newContext();
  const errors = [];
  try {
    const load = async (origin) => {
      const page = await context.newPage();
      page.on("pageerror", (e) => errors.push(e.message));
      const t = tag("inject");
      await page.goto(`${origin}/plain.html#${t}`);
      // The page reports in its title: got:DATA or closed:CODE.
      await page.waitForFunction(() => /^(got|closed):/.test(document.title), null, { timeout: 8000 });
      const result = await page.evaluate(() => ({
        title: document.title,
        events: window.events,
        transport: window.ws.transport ?? null,
        bridged: typeof window.WsBridge === "object",
        // What the proxy put at the start of <head>.
        firstInHead: [...document.head.children].slice(0, 2).map((e) => e.outerHTML),
      }));
      await page.close();
      return { ...result, t };
    };

    const injected = await load(INJECT);
    assertEqual(injected.title, "got:hi", "title of the injected page (the echo)");
    assertEqual(injected.events, ["open", "message"], "the page's own socket events");
    if (!BRIDGED.includes(injected.transport)) throw new Error("transport behind the injected shim: " + injected.transport);
    if (!injected.bridged || !/^<script src="\/_bridge\/client\.js"><\/script>$/.test(injected.firstInHead[0])) {
      throw new Error("client not injected first in <head>: " + JSON.stringify(injected.firstInHead));
    }
    if (!/installWebSocketShim/.test(injected.firstInHead[1])) throw new Error("no shim installed: " + injected.firstInHead[1]);

    const plain = await load(PROXY);
    assertEqual(plain.bridged, false, "WsBridge defined without injection");
    if (!/^closed:/.test(plain.title)) throw new Error("the native WebSocket was not refused: " + plain.title);
    if (!plain.events.includes("error") || plain.events.includes("open") || plain.events.includes("message")) {
      throw new Error("native WebSocket events without injection: " + JSON.stringify(plain.events));
    }
    assertEqual(errors, [], "page errors");
    return { transport: injected.transport, without_injection: plain.title };
  } finally {
    await context.close();
  }
});

// The demo chat as a person uses it: load, see the state and transport,
// chat, switch to poll, chat again; a second member sees the messages. Saves
// a screenshot (WSB_SCREENSHOT) for a human to look at.
check("demo_chat", 40000, (browser) => demoChat(browser, DEMO, SCREENSHOT));

// The same through a cluster: every request of the page, its sends and its
// readers' reconnects, may land on any replica.
if (DEMO_CLUSTER) {
  check("demo_chat_cluster", 40000, (browser) => demoChat(browser, DEMO_CLUSTER, null));
}

async function demoChat(browser, DEMO, SCREENSHOT) {
  const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
  // The friend in a profile of its own, so that only "me" goes offline.
  const elsewhere = await browser.newContext();
  const errors = [];
  try {
    const open = async (query, where = context) => {
      const page = await where.newPage();
      page.on("pageerror", (e) => errors.push(e.message));
      await page.goto(`${DEMO}/${query}`);
      return page;
    };
    // Resolves with the transport shown once #state says open with a
    // transport (not "-") in #transport, optionally a given one.
    const connected = async (page, want) => {
      await page.waitForFunction(
        (want) => {
          const state = document.querySelector("#state").dataset.state;
          const transport = document.querySelector("#transport").textContent.trim();
          return state === "open" && transport !== "-" && (!want || transport === want);
        },
        want,
        { timeout: 8000 },
      );
      return page.locator("#transport").textContent();
    };
    // Sends through the form and waits for the message to come back as
    // the sender's own line.
    const say = async (page, text) => {
      await page.fill("#input", text);
      await page.click("#send");
      await page.locator("#messages li.mine", { hasText: text }).waitFor({ timeout: 8000 });
    };

    const me = await open("?nick=tester");
    const transport = await connected(me);
    if (!BRIDGED.includes(transport)) throw new Error("transport shown: " + transport);
    assertEqual(await me.locator("#state").textContent(), "open", "#state text");
    const policy = await me.locator("#policy").textContent();
    if (!/WebSocket upgrades are refused on \/ws by configuration/.test(policy)) throw new Error("#policy: " + policy);
    const reason = await me.locator("#reason").textContent();
    if (!reason.startsWith(`This page is on ${transport}: `) || !/websocket failed/.test(reason)) throw new Error("#reason: " + reason);
    const friend = await open("?nick=friend&transport=stream", elsewhere);
    assertEqual(await connected(friend), "stream", "friend's transport");

    await say(me, "hello from chromium");
    assertEqual(await me.inputValue("#input"), "", "#input after sending");
    await friend.locator("#messages li", { hasText: "hello from chromium" }).waitFor({ timeout: 8000 });

    await me.selectOption("#transport-select", "poll");
    await connected(me, "poll");
    await say(me, "still here over poll");
    await friend.locator("#messages li", { hasText: "still here over poll" }).waitFor({ timeout: 8000 });
    await friend.fill("#input", "hi tester");
    await friend.click("#send");
    await me.locator("#messages li", { hasText: "hi tester" }).waitFor({ timeout: 8000 });

    // Offline and back: "reconnecting", then "resumed, nothing lost", and
    // what the friend said meanwhile arrives.
    await context.setOffline(true);
    await me.waitForFunction(() => document.querySelector("#state").dataset.state === "reconnecting", null, { timeout: 10000 });
    await friend.fill("#input", "said while you were away");
    await friend.click("#send");
    await friend.locator("#messages li.mine", { hasText: "said while you were away" }).waitFor({ timeout: 8000 });
    await context.setOffline(false);
    await me.locator("#messages li", { hasText: "resumed, nothing lost" }).waitFor({ timeout: 10000 });
    await me.locator("#messages li", { hasText: "said while you were away" }).waitFor({ timeout: 8000 });
    assertEqual(await me.locator("#state").textContent(), "open", "#state after resuming");

    const shown = await me.evaluate(() => ({
      nick: document.querySelector("#nick").value,
      picker: document.querySelector("#transport-select").value,
      reconnects: document.querySelector("#reconnects").textContent,
      online: document.querySelector("#online").textContent,
      lines: [...document.querySelectorAll("#messages li")].map((li) => li.textContent),
    }));
    assertEqual([shown.nick, shown.picker], ["tester", "poll"], "#nick and #transport-select");
    if (SCREENSHOT) await me.screenshot({ path: SCREENSHOT });
    assertEqual(errors, [], "page errors");
    return { first_transport: transport, reason, ...shown };
  } finally {
    await context.close();
    await elsewhere.close();
  }
}

// Both directions under a relay that cuts every connection every ~300ms:
// everything arrives exactly once and in order, on both sides.
for (const transport of BRIDGED) {
  check(`flaky_network_${transport}`, 45000, async (browser) => {
    const { page, done } = await freshPage(browser, RELAY);
    const t = tag("flaky");
    try {
      await page.evaluate(
        async ({ transport, t }) => {
          window.flaky = await T.open(`/ws?tag=${t}`, { transports: [transport] });
        },
        { transport, t },
      );
      await relayChaos(true);
      const result = await page.evaluate(
        async ({ count }) => {
          const socket = window.flaky;
          const started = performance.now();
          // The backend pushes its own numbered stream while echoing ours.
          socket.send(`push:${count}:2`);
          for (let i = 0; i < count; i++) socket.send(`c:${i}`);
          const got = await T.messages(socket, 2 * count, 80000);
          const echoes = got.filter((m) => m.startsWith("c:"));
          const pushes = got.filter((m) => m.startsWith("p:"));
          const expect = (prefix) => Array.from({ length: count }, (_, i) => `${prefix}:${i}`).join(",");
          return {
            echoesOk: echoes.join(",") === expect("c"),
            pushesOk: pushes.join(",") === expect("p"),
            echoes: echoes.length,
            pushes: pushes.length,
            other: got.filter((m) => !m.startsWith("c:") && !m.startsWith("p:")).slice(0, 5),
            firstBadEcho: echoes.findIndex((m, i) => m !== `c:${i}`),
            firstBadPush: pushes.findIndex((m, i) => m !== `p:${i}`),
            errors: socket.__errors,
            ms: performance.now() - started,
          };
        },
        { count: FLAKY_MESSAGES },
      );
      await relayChaos(false);
      const log = await page.evaluate(async (t) => {
        window.flaky.close();
        await T.closed(window.flaky);
        return T.backendLog(t);
      }, t);
      if (!result.echoesOk || !result.pushesOk || result.errors.length) {
        throw new Error("lost, doubled or reordered: " + JSON.stringify(result));
      }
      const sent = log.filter((f) => f.type === "text").map((f) => f.data);
      const expected = [`push:${FLAKY_MESSAGES}:2`, ...Array.from({ length: FLAKY_MESSAGES }, (_, i) => `c:${i}`)];
      assertEqual(sent.length, expected.length, "frames the backend received");
      assertEqual(sent.join(","), expected.join(","), "frames the backend received, in order");
      return { ms: Math.round(result.ms) };
    } finally {
      await relayChaos(false);
      await done();
    }
  });
}

// A burst larger than the proxy may hold undelivered (drop-oldest): the page
// learns of every dropped event through an error event with from/to, and
// gets everything else once, in order.
check("gap_reaches_page_as_error", 20000, async (browser) => {
  const { page, done } = await freshPage(browser, GAPPY);
  try {
    const count = 3000;
    const result = await page.evaluate(
      async ({ count }) => {
        const socket = await T.open("/ws?tag=gap", { transports: ["poll"] });
        const gaps = [];
        socket.addEventListener("error", (e) => gaps.push([e.from, e.to, typeof e.message]));
        // Pushes are the session's only events: p:i has event id i + 1.
        socket.send(`push:${count}:0`);
        const deadline = Date.now() + 15000;
        const seen = [];
        while (Date.now() < deadline) {
          seen.push(...(await T.messages(socket, 1, deadline - Date.now())));
          if (seen.at(-1) === `p:${count - 1}`) break;
        }
        socket.close();
        return { ids: seen.map((m) => Number(m.slice(2)) + 1), gaps };
      },
      { count },
    );
    if (!result.gaps.length) throw new Error("no gap was reported; received " + result.ids.length);
    // Every id is either received or inside exactly one reported gap, in order.
    const accounted = [...result.ids.map((id) => [id, id]), ...result.gaps.map(([from, to]) => [from, to])].sort((a, b) => a[0] - b[0]);
    let next = 1;
    for (const [from, to] of accounted) {
      if (from !== next || to < from) throw new Error(`ids not accounted for exactly once near ${next}: ${JSON.stringify(accounted.slice(0, 20))}`);
      next = to + 1;
    }
    assertEqual(next, count + 1, "ids accounted for");
    for (let i = 1; i < result.ids.length; i++) if (result.ids[i] <= result.ids[i - 1]) throw new Error("messages out of order");
    assertEqual(result.gaps[0][2], "string", "error event message");
    return { gaps: result.gaps.length, received: result.ids.length };
  } finally {
    await done();
  }
});

// A downstream connection that goes silent without closing (half-open TCP):
// the heartbeat watchdog must notice and resume from the cursor. The test
// proxy's heartbeat is 1s, so the watchdog fires after about 2.5s.
for (const transport of ["sse", "stream"]) {
  check(`half_open_connection_${transport}`, 25000, async (browser) => {
    const { page, done } = await freshPage(browser, RELAY);
    try {
      await page.evaluate(
        async ({ transport }) => {
          window.frozen = await T.open("/ws?tag=frozen", { transports: [transport] });
          window.frozen.send("push:6:1000");
          await T.messages(window.frozen, 1, 5000);
        },
        { transport },
      );
      await relayCommand("f");
      const result = await page.evaluate(async () => {
        const started = performance.now();
        const rest = await T.messages(window.frozen, 5, 15000);
        window.frozen.close();
        return { rest, ms: performance.now() - started, errors: window.frozen.__errors };
      });
      assertEqual(result.rest, ["p:1", "p:2", "p:3", "p:4", "p:5"], "messages after the freeze");
      assertEqual(result.errors, [], "error events");
      return { ms: Math.round(result.ms) };
    } finally {
      await done();
    }
  });
}

function relayChaos(on) {
  return relayCommand(on ? "1" : "0");
}

function relayCommand(command) {
  const [host, port] = RELAY_CONTROL.split(":");
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), host, () => socket.end(command));
    socket.on("close", resolve);
    socket.on("error", reject);
  });
}

// -------------------------------------------------------------------- main

await runChecks("browser");
