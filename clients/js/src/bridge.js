// wsbridge browser client: a socket with the browser WebSocket API that uses a
// real WebSocket where the network allows one and otherwise the wsbridge
// proxy's HTTP transports (SSE, NDJSON stream or long-poll down, POST up).
//
// This file is the one source of every form: the proxy wraps it in an
// IIFE for client.js (defining globalThis.WsBridge) and appends `export`
// statements for client.mjs (clients/js/build.mjs does the same for the npm
// package, and adds a CommonJS form). So it declares only top-level constants,
// functions and classes, and never imports or exports anything itself.
//
// Guarantees kept across dropped HTTP connections (see PROTOCOL.md):
// - down: every reader resumes from the cursor (the id of the last event the
//   page has seen), so each message reaches the page once and in order; a
//   `gap` reaches the page as an `error` event, never silently;
// - up: one POST in flight at a time, each carrying `Bridge-Seq`, retried with
//   the same number until acknowledged, so no frame is lost or doubled.

const WSBRIDGE_VERSION = "__WSBRIDGE_VERSION__";

const WSBRIDGE_DEFAULTS = Object.freeze({
  prefix: "/_bridge",
  transports: Object.freeze(["websocket", "sse", "stream", "poll"]),
  // A firewall that blocks WebSocket often lets the upgrade hang rather than
  // refusing it; this bounds how long the page waits before falling back.
  websocketTimeout: 1500,
  // Bounds each bridged transport's first connection (headers received,
  // or the first poll's answer).
  openTimeout: 5000,
  // SSE and stream must deliver their first event (the proxy sends a
  // heartbeat at once) within this; an intermediary that holds streamed
  // bodies shows headers and then nothing, and moves us on.
  probeTimeout: 2000,
  // Remember per origin (localStorage) which transport worked, and start
  // there on the next load, for this long.
  remember: true,
  rememberFor: 24 * 60 * 60 * 1000,
  // While bridged, how often to check in the background whether a real
  // WebSocket would now open (the live socket is never switched).
  reprobeInterval: 5 * 60 * 1000,
  // Reconnecting gives up after this long without one working connection.
  reconnectTimeout: 60000,
  withCredentials: false,
});

const WSBRIDGE_TRANSPORTS = ["websocket", "sse", "stream", "poll"];
const WSBRIDGE_BRIDGED = ["sse", "stream", "poll"];

// Reconnect and retry backoff: exponential with jitter, capped, so a flapping
// network neither hammers the proxy nor leaves the page waiting long.
const BACKOFF_BASE_MS = 100;
const BACKOFF_CAP_MS = 5000;
// Longest Retry-After we honour; a larger one is treated as this.
const RETRY_AFTER_CAP_MS = 10000;
// How often an open that got 503 (session limit) is retried.
const OPEN_BUSY_RETRIES = 3;
// A reader that hears nothing, not even a heartbeat, for this many
// heartbeat intervals is presumed dead (half-open TCP) and replaced.
const HEARTBEAT_TOLERANCE = 2.5;
const DEFAULT_HEARTBEAT_MS = 15000;
const MIN_WATCHDOG_MS = 1000;
// Long-poll wait asked of the proxy (it caps this at poll.max_wait), and the
// slack after it before a poll request is presumed lost.
const POLL_WAIT_S = 25;
const POLL_SLACK_MS = 10000;
// close(): how long pending sends may take to flush before the DELETE, and
// how long to wait for the session's close event after it.
const CLOSE_FLUSH_TIMEOUT_MS = 10000;
const CLOSE_EVENT_TIMEOUT_MS = 5000;
// Deadlines of single requests, so one that hangs on a half-open connection
// is abandoned and retried. A retried send is harmless (Bridge-Seq); the open
// waits for the upstream handshake, which the proxy itself bounds.
const REQUEST_TIMEOUT_MS = 10000;
const OPEN_REQUEST_TIMEOUT_MS = 30000;
const MAX_CLOSE_REASON_BYTES = 123;
// A WebSocket handshake that outlived websocketTimeout is left running this
// long in the background: if it opens, the next load knows WebSocket works.
const SLOW_WEBSOCKET_GRACE_MS = 30000;
// A WebSocket remembered as working but slow gets twice its last handshake
// time (plus this) to open, up to the cap.
const SLOW_WEBSOCKET_SLACK_MS = 500;
const SLOW_WEBSOCKET_CAP_MS = 10000;
// localStorage key prefix of what worked, per bridge origin and prefix:
// `wsbridge:transport:` + "https://app.example" + "/_bridge".
const MEMORY_KEY_PREFIX = "wsbridge:transport:";

const WSBRIDGE_NATIVE = Symbol.for("wsbridge.nativeWebSocket");

// The browser's own WebSocket, captured when this script runs. If the shim is
// already installed (the client loaded twice), unwrap it: the websocket
// transport must never construct a BridgeSocket again.
const NativeWebSocket = unwrapNativeWebSocket(globalThis.WebSocket);

function unwrapNativeWebSocket(ctor) {
  while (typeof ctor === "function" && ctor[WSBRIDGE_NATIVE]) ctor = ctor[WSBRIDGE_NATIVE];
  return typeof ctor === "function" ? ctor : null;
}

const utf8Encoder = new TextEncoder();

// ignoreBOM: a text frame may legitimately start with U+FEFF.
function utf8Decode(bytes) {
  return new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes);
}

function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function backoffMs(failures) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures, 16));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

// Retry-After (seconds or an HTTP date) when present, else the backoff.
function retryDelayMs(response, failures) {
  const header = response && response.headers.get("Retry-After");
  if (header) {
    const seconds = /^\d+$/.test(header.trim()) ? Number(header) : (Date.parse(header) - Date.now()) / 1000;
    if (Number.isFinite(seconds)) return Math.min(RETRY_AFTER_CAP_MS, Math.max(0, seconds * 1000));
  }
  return backoffMs(failures);
}

// Appends query parameters with encodeURIComponent (space as %20, never "+",
// which not every server decodes as a space).
function withQuery(link, params) {
  let url = link;
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null) continue;
    url += (url.includes("?") ? "&" : "?") + encodeURIComponent(key) + "=" + encodeURIComponent(String(value));
  }
  return url;
}

function parseJson(bytes) {
  try {
    return JSON.parse(utf8Decode(new Uint8Array(bytes)));
  } catch {
    return null;
  }
}

// An AbortSignal that fires when `parent` does or after `ms`; call done()
// once the request settled. (AbortSignal.any is too recent to rely on.)
function deadline(parent, ms) {
  const controller = new AbortController();
  const abort = () => controller.abort();
  if (parent.aborted) abort();
  else parent.addEventListener("abort", abort, { once: true });
  const timer = setTimeout(abort, ms);
  return {
    signal: controller.signal,
    abort,
    done() {
      clearTimeout(timer);
      parent.removeEventListener("abort", abort);
    },
  };
}

// What worked last time for one bridge (see MEMORY_KEY_PREFIX):
// { transport, websocket: "works" | "fails" | undefined, wsMs, at, probedAt }.
// `at` is when it was learned; after `rememberFor` it is ignored and the
// next socket probes every transport afresh. localStorage may be missing or
// throw (sandboxed frames, storage disabled): then nothing is remembered.
function readMemory(key, maxAgeMs) {
  try {
    const memory = JSON.parse(globalThis.localStorage.getItem(key));
    if (!memory || typeof memory !== "object") return null;
    const age = Date.now() - Number(memory.at);
    if (!(age >= 0 && age < maxAgeMs)) return null;
    return memory;
  } catch {
    return null;
  }
}

function writeMemory(key, patch) {
  try {
    let old = null;
    try {
      old = JSON.parse(globalThis.localStorage.getItem(key));
    } catch {
      old = null;
    }
    globalThis.localStorage.setItem(key, JSON.stringify({ ...(old && typeof old === "object" ? old : {}), ...patch }));
  } catch {
    // storage unavailable or full: nothing remembered
  }
}

function domException(message, name) {
  return new DOMException(message, name);
}

// The WebSocket constructor's URL rules: relative to the document, http(s)
// becomes ws(s), no other scheme, no fragment.
function resolveWebSocketUrl(url) {
  const base = globalThis.document ? globalThis.document.baseURI : globalThis.location ? globalThis.location.href : undefined;
  let parsed;
  try {
    parsed = new URL(String(url), base);
  } catch {
    throw domException(`Failed to construct 'WebSocket': The URL '${url}' is invalid.`, "SyntaxError");
  }
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw domException(`Failed to construct 'WebSocket': The URL's scheme must be either 'http', 'https', 'ws', or 'wss'. '${parsed.protocol}' is not allowed.`, "SyntaxError");
  }
  if (parsed.hash) {
    throw domException(`Failed to construct 'WebSocket': The URL contains a fragment identifier ('${parsed.hash}').`, "SyntaxError");
  }
  return parsed.href;
}

const PROTOCOL_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function normalizeProtocols(protocols) {
  if (protocols === undefined || protocols === null) return [];
  const list = typeof protocols === "string" ? [protocols] : Array.from(protocols, String);
  const seen = new Set();
  for (const p of list) {
    if (!PROTOCOL_TOKEN.test(p)) {
      throw domException(`Failed to construct 'WebSocket': The subprotocol '${p}' is invalid.`, "SyntaxError");
    }
    if (seen.has(p)) {
      throw domException(`Failed to construct 'WebSocket': The subprotocol '${p}' is duplicated.`, "SyntaxError");
    }
    seen.add(p);
  }
  return list;
}

function normalizeOptions(options) {
  const o = { ...WSBRIDGE_DEFAULTS, ...(options || {}) };
  const transports = Array.from(o.transports, String);
  for (const t of transports) {
    if (!WSBRIDGE_TRANSPORTS.includes(t)) throw new TypeError(`wsbridge: unknown transport '${t}'`);
  }
  let prefix = String(o.prefix);
  if (!prefix.startsWith("/")) prefix = "/" + prefix;
  prefix = prefix.replace(/\/+$/, "");
  return {
    prefix,
    transports,
    websocketTimeout: Number(o.websocketTimeout),
    openTimeout: Number(o.openTimeout),
    probeTimeout: Number(o.probeTimeout),
    remember: Boolean(o.remember),
    rememberFor: Number(o.rememberFor),
    reprobeInterval: Number(o.reprobeInterval),
    reconnectTimeout: Number(o.reconnectTimeout),
    withCredentials: Boolean(o.withCredentials),
    // undefined: the captured native WebSocket; null: never use one.
    WebSocket: o.WebSocket === undefined ? NativeWebSocket : unwrapNativeWebSocket(o.WebSocket),
    traceparent: o.traceparent,
  };
}

// The W3C `traceparent` for an open request, from the `traceparent` option:
// a string, or a function called at each open (so each can carry its own
// span). Anything not of its form is left out, as the proxy would drop it.
function traceparentHeader(option) {
  let value;
  try {
    value = typeof option === "function" ? option() : option;
  } catch {
    return null;
  }
  if (typeof value !== "string") return null;
  value = value.trim();
  return /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[ -~]*)?$/.test(value) ? value : null;
}

// A frame to send, copied at send() time as a WebSocket does, so the page may
// reuse its buffer at once. A Blob is read when its turn comes.
function toOutgoing(data) {
  if (typeof Blob !== "undefined" && data instanceof Blob) {
    return { blob: data, body: null, binary: true, size: data.size };
  }
  if (Object.prototype.toString.call(data) === "[object ArrayBuffer]") {
    const body = new Uint8Array(data.slice(0));
    return { blob: null, body, binary: true, size: body.byteLength };
  }
  if (ArrayBuffer.isView(data)) {
    const body = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
    return { blob: null, body, binary: true, size: body.byteLength };
  }
  const body = utf8Encoder.encode(String(data));
  return { blob: null, body, binary: false, size: body.byteLength };
}

// Thrown inside connect(): `next` tries the next transport, `final` gives up.
class BridgeOpenError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

// Open bridged sockets, each with what closes its session when the page goes
// away (pagehide), as the browser closes its real WebSockets then: with 1001,
// "going away", which the proxy's DELETE accepts for this, by a keepalive
// fetch that outlives the page; and what the network's offline and online
// events do to it.
const liveBridgeSockets = new Map();
if (typeof globalThis.addEventListener === "function") {
  globalThis.addEventListener("pagehide", () => {
    for (const live of Array.from(liveBridgeSockets.values())) live.goingAway();
  });
  // The browser knows before any watchdog that the network went away or
  // came back: reconnect at once rather than after a timeout or a backoff.
  globalThis.addEventListener("offline", () => {
    for (const live of Array.from(liveBridgeSockets.values())) live.offline();
  });
  globalThis.addEventListener("online", () => {
    for (const live of Array.from(liveBridgeSockets.values())) live.online();
  });
}

class BridgeSocket extends EventTarget {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  #url;
  #wsOrigin; // MessageEvent.origin, as a WebSocket reports it
  #httpOrigin; // where bridge requests go: the url's origin in http(s)
  #target; // path and query of the url, the `url` of the open request
  #protocols;
  #options;
  #readyState = 0;
  #protocol = "";
  #extensions = "";
  #binaryType = "blob";
  #transport = null;
  #handlers = { open: null, message: null, error: null, close: null };

  // websocket transport: the native socket, once it opened.
  #ws = null;

  // Bridged transports.
  #session = null; // { id, heartbeatMs, links } from the open answer
  #closed = new AbortController(); // aborts every request when the socket ends
  #cursor = 0; // id of the last event the page has accounted for
  #generation = 0; // bumped per downstream connection; stale callbacks compare it
  #stopReader = null; // ends the current downstream connection
  #watchdog = null;
  #reconnectTimer = null;
  #reconnectFailures = 0;
  #downSince = 0; // when the downstream last lost a working connection
  #openWaiter = null; // resolves the first connection attempt during open
  #sawHeaders = false; // the attempt being probed got its response headers
  #reconnecting = false; // the downstream dropped and is not back yet

  // Choosing a transport.
  #memoryKey; // localStorage key of what worked for this bridge
  #attempts = []; // what was tried while opening: { transport, result, ms }
  #remembered = null; // the transport an earlier load remembered, if used
  #reprobeTimer = null;
  #openMs = 0; // how long the open request took

  // Upstream (send) side.
  #queue = []; // outgoing frames not yet acknowledged, in order
  #pumping = false;
  #seq = 0; // last Bridge-Seq assigned
  #buffered = 0; // bytes queued and not yet acknowledged
  #sendsStopped = false; // the session no longer accepts frames
  #flushWaiters = [];
  #closeTimer = null;

  constructor(url, protocols, options) {
    super();
    this.#url = resolveWebSocketUrl(url);
    this.#protocols = normalizeProtocols(protocols);
    this.#options = normalizeOptions(options);
    const parsed = new URL(this.#url);
    this.#wsOrigin = `${parsed.protocol}//${parsed.host}`;
    this.#httpOrigin = `${parsed.protocol === "wss:" ? "https:" : "http:"}//${parsed.host}`;
    this.#target = parsed.pathname + parsed.search;
    this.#memoryKey = MEMORY_KEY_PREFIX + this.#httpOrigin + this.#options.prefix;
    // Events must never fire before the caller can attach handlers.
    queueMicrotask(() => this.#connect());
  }

  get CONNECTING() { return 0; }
  get OPEN() { return 1; }
  get CLOSING() { return 2; }
  get CLOSED() { return 3; }

  get url() { return this.#url; }
  get readyState() { return this.#ws ? this.#ws.readyState : this.#readyState; }
  get protocol() { return this.#protocol; }
  get extensions() { return this.#extensions; }
  get bufferedAmount() { return this.#ws ? this.#ws.bufferedAmount : this.#buffered; }
  /** The transport in use ("websocket", "sse", "stream", "poll"), null until open. */
  get transport() { return this.#transport; }
  /** "connecting", "open", "reconnecting", "closing" or "closed": readyState,
   *  plus "reconnecting" while a bridged socket's downstream is being
   *  re-established (readyState stays OPEN then). */
  get state() {
    const ready = this.readyState;
    if (ready === BridgeSocket.OPEN && this.#reconnecting) return "reconnecting";
    return ["connecting", "open", "closing", "closed"][ready];
  }
  get binaryType() { return this.#binaryType; }
  set binaryType(value) {
    // Like WebSocket: an unknown value is ignored.
    if (value !== "blob" && value !== "arraybuffer") return;
    this.#binaryType = value;
    if (this.#ws) this.#ws.binaryType = value;
  }

  get onopen() { return this.#handlers.open && this.#handlers.open.value; }
  set onopen(fn) { this.#setHandler("open", fn); }
  get onmessage() { return this.#handlers.message && this.#handlers.message.value; }
  set onmessage(fn) { this.#setHandler("message", fn); }
  get onerror() { return this.#handlers.error && this.#handlers.error.value; }
  set onerror(fn) { this.#setHandler("error", fn); }
  get onclose() { return this.#handlers.close && this.#handlers.close.value; }
  set onclose(fn) { this.#setHandler("close", fn); }

  // An on* handler is a listener registered when first set, so it runs in
  // order with addEventListener ones; null unregisters it.
  #setHandler(type, fn) {
    const value = typeof fn === "function" ? fn : null;
    const slot = this.#handlers[type];
    if (!value) {
      if (slot) this.removeEventListener(type, slot.listener);
      this.#handlers[type] = null;
      return;
    }
    if (slot) {
      slot.value = value;
      return;
    }
    const created = { value, listener: (event) => created.value.call(this, event) };
    this.#handlers[type] = created;
    this.addEventListener(type, created.listener);
  }

  send(data) {
    if (this.readyState === BridgeSocket.CONNECTING) {
      throw domException("Failed to execute 'send' on 'WebSocket': Still in CONNECTING state.", "InvalidStateError");
    }
    if (this.#ws) {
      this.#ws.send(data);
      return;
    }
    const frame = toOutgoing(data);
    // Like WebSocket after close(): counted, then discarded.
    this.#buffered += frame.size;
    if (this.#readyState !== BridgeSocket.OPEN || this.#sendsStopped) return;
    this.#queue.push(frame);
    this.#pump();
  }

  close(code, reason) {
    if (code !== undefined) {
      code = Math.min(65535, Math.max(0, Math.round(Number(code)) || 0));
      if (code !== 1000 && (code < 3000 || code > 4999)) {
        throw domException(`Failed to execute 'close' on 'WebSocket': The close code must be either 1000, or between 3000 and 4999. ${code} is neither.`, "InvalidAccessError");
      }
    }
    if (reason !== undefined) {
      reason = String(reason);
      if (utf8Encoder.encode(reason).byteLength > MAX_CLOSE_REASON_BYTES) {
        throw domException("Failed to execute 'close' on 'WebSocket': The close reason must not be greater than 123 UTF-8 bytes.", "SyntaxError");
      }
    }
    if (this.#ws) {
      this.#ws.close(code, reason);
      return;
    }
    if (this.#readyState === BridgeSocket.CLOSING || this.#readyState === BridgeSocket.CLOSED) return;
    if (this.#readyState === BridgeSocket.CONNECTING) {
      // As a WebSocket does: the attempt fails, error then close 1006.
      // connect() notices and closes any session it opened meanwhile.
      this.#readyState = BridgeSocket.CLOSING;
      this.#closed.abort();
      this.#detach();
      setTimeout(() => this.#finish(1006, "", false, "closed before the connection was established"), 0);
      return;
    }
    this.#readyState = BridgeSocket.CLOSING;
    this.#closeSession(code, reason);
  }

  // ---------------------------------------------------------------- opening

  // The order to try, and the WebSocket's timeout, from the options and
  // what an earlier load remembered (see readMemory).
  #plan() {
    const list = this.#options.transports;
    const plan = { order: list, websocketTimeout: this.#options.websocketTimeout };
    // A socket pinned to one transport has no choice to make.
    const memory = this.#options.remember && list.length > 1 ? readMemory(this.#memoryKey, this.#options.rememberFor) : null;
    if (!memory || !list.includes(memory.transport)) return plan;
    this.#remembered = memory.transport;
    if (memory.transport === "websocket") {
      // It worked, if slowly: give it the time it took, and some.
      const ms = Number(memory.wsMs) || 0;
      plan.websocketTimeout = Math.max(plan.websocketTimeout, Math.min(SLOW_WEBSOCKET_CAP_MS, 2 * ms + SLOW_WEBSOCKET_SLACK_MS));
      return plan;
    }
    // Start on the bridged transport that worked; the others follow, and a
    // WebSocket known to fail comes last (it is not tried while another works).
    const rest = list.filter((t) => t !== memory.transport && t !== "websocket");
    plan.order = [memory.transport, ...rest, ...(list.includes("websocket") ? ["websocket"] : [])];
    return plan;
  }

  async #connect() {
    const plan = this.#plan();
    let bridgeUnavailable = false;
    // A streamed body held by an intermediary (headers, then nothing): the
    // other streamed transport goes through the same intermediary.
    let streamsHeld = false;
    let failure = "no transport could be opened";
    // The WebSocket attempt's result: "failed", "timeout" (still running in
    // the background) or null (not tried).
    let websocketFailed = null;
    const connectStarted = Date.now();
    for (const name of plan.order) {
      if (this.#readyState !== BridgeSocket.CONNECTING) break;
      const started = Date.now();
      const attempt = (result) => this.#attempts.push({ transport: name, result, ms: Date.now() - started });
      try {
        if (name === "websocket") {
          const result = await this.#tryWebSocket(plan.websocketTimeout, started);
          if (result === "open") return;
          attempt(result);
          websocketFailed = result;
          failure = "the WebSocket connection failed";
          continue;
        }
        if (bridgeUnavailable) continue;
        if (streamsHeld && name !== "poll") {
          attempt("skipped");
          continue;
        }
        if (!this.#session) this.#session = await this.#openSession();
        if (this.#readyState !== BridgeSocket.CONNECTING) break;
        if (!this.#session.links[name]) {
          attempt("not offered");
          continue;
        }
        this.#transport = name;
        const result = await this.#firstConnection(name, started, websocketFailed, connectStarted);
        if (result === "open") return;
        attempt(result);
        if (result.startsWith("held")) streamsHeld = true;
        this.#transport = null;
        failure = `the ${name} transport failed to connect`;
      } catch (err) {
        if (err instanceof BridgeOpenError && err.kind === "next") {
          bridgeUnavailable = true;
          failure = err.message;
          attempt("bridge unavailable");
          continue;
        }
        failure = err instanceof Error ? err.message : String(err);
        break;
      }
    }
    // Nothing opened (or close() was called): release the upstream we hold.
    this.#transport = null;
    this.#detach();
    if (this.#session) this.#deleteSessionQuietly();
    this.#finish(1006, "", false, `wsbridge: ${failure}`);
  }

  // Why the socket is on its transport, for the `transport` event and pages.
  #reason() {
    const words = {
      failed: "failed",
      timeout: "did not answer in time",
      held: "held by an intermediary (headers, then no event within the probe window)",
      "held, no headers": "held by an intermediary (no answer within the probe window)",
      skipped: "skipped (streamed responses are held)",
      "not offered": "not offered for this URL",
      "bridge unavailable": "the bridge is unavailable",
    };
    const tried = this.#attempts.filter((a) => a.result !== "open").map((a) => `${a.transport} ${words[a.result] || a.result}`);
    const why = tried.length ? tried.join("; ") + "; " : "";
    return `${why}${this.#transport} works${this.#remembered === this.#transport ? " (started there: remembered from an earlier load)" : ""}`;
  }

  // The socket opened on this.#transport: tell the page, remember it.
  #announceOpen(started, websocketFailed, connectStarted) {
    this.#attempts.push({ transport: this.#transport, result: "open", ms: Date.now() - started });
    if (this.#options.remember && this.#options.transports.length > 1) {
      const memory = readMemory(this.#memoryKey, this.#options.rememberFor);
      if (this.#transport === "websocket") {
        writeMemory(this.#memoryKey, { transport: "websocket", websocket: "works", wsMs: Date.now() - started, at: Date.now() });
      } else if (memory && memory.websocket === "works" && Number(memory.at) >= connectStarted) {
        // Our own slow handshake (or another tab's) just opened in the
        // background: the next load starts on the WebSocket.
      } else if (!memory || memory.transport !== this.#transport || websocketFailed) {
        // Learned now. A remembered choice that held keeps its date, so it
        // expires and the next load after that probes every transport again.
        const patch = { transport: this.#transport, at: Date.now() };
        // A handshake still running in the background reports itself.
        if (websocketFailed === "failed") patch.websocket = "fails";
        writeMemory(this.#memoryKey, patch);
      }
    }
    this.#dispatchTransport(null, this.#reason());
    if (this.#transport !== "websocket") this.#scheduleReprobe();
  }

  #dispatchTransport(previous, reason) {
    const detail = { transport: this.#transport, previous, reason, attempts: this.#attempts.slice() };
    const event = typeof CustomEvent === "function" ? new CustomEvent("transport", { detail }) : new Event("transport");
    if (!("detail" in event)) Object.defineProperty(event, "detail", { value: detail });
    this.dispatchEvent(event);
  }

  // While bridged, a real WebSocket is tried now and then in the background;
  // when it opens, it is closed at once (the upstream sees a short extra
  // connection) and the next load starts on it. The live socket is never
  // switched mid-session, so nothing can be lost or doubled.
  #scheduleReprobe() {
    const Native = this.#options.WebSocket;
    const every = this.#options.reprobeInterval;
    if (!Native || !this.#options.remember || !this.#options.transports.includes("websocket") || !(every > 0)) return;
    clearTimeout(this.#reprobeTimer);
    this.#reprobeTimer = setTimeout(() => {
      if (this.#readyState !== BridgeSocket.OPEN) return;
      // Sockets of every tab share the memory: one probe per interval.
      const memory = readMemory(this.#memoryKey, Infinity) || {};
      if (!(Date.now() - (Number(memory.probedAt) || 0) < every)) {
        writeMemory(this.#memoryKey, { probedAt: Date.now() });
        this.#backgroundWebSocket(this.#newNativeWebSocket(), Date.now());
      }
      this.#scheduleReprobe();
    }, every);
  }

  #newNativeWebSocket() {
    const Native = this.#options.WebSocket;
    try {
      return this.#protocols.length ? new Native(this.#url, this.#protocols) : new Native(this.#url);
    } catch {
      return null;
    }
  }

  // Watches a native WebSocket nobody uses: its outcome only updates the
  // memory (it is never adopted).
  #backgroundWebSocket(ws, started) {
    if (!ws) return;
    const grace = setTimeout(() => settle(null), SLOW_WEBSOCKET_GRACE_MS);
    const settle = (works) => {
      clearTimeout(grace);
      ws.onopen = ws.onerror = ws.onclose = null;
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
      if (works === true) writeMemory(this.#memoryKey, { transport: "websocket", websocket: "works", wsMs: Date.now() - started, at: Date.now() });
      else if (works === false) writeMemory(this.#memoryKey, { websocket: "fails" });
    };
    ws.onopen = () => settle(true);
    ws.onerror = () => settle(false);
    ws.onclose = () => settle(false);
  }

  // "open" once a native WebSocket opened and was adopted; "failed" or
  // "timeout" otherwise. A handshake still running at the timeout is left
  // to finish in the background: a slow WebSocket that works is remembered
  // for the next load, though this socket goes on without it.
  #tryWebSocket(timeoutMs, started) {
    if (!this.#options.WebSocket) return Promise.resolve("failed");
    return new Promise((resolve) => {
      const ws = this.#newNativeWebSocket();
      if (!ws) {
        resolve("failed");
        return;
      }
      let timer = null;
      const settle = (result) => {
        clearTimeout(timer);
        ws.onopen = ws.onerror = ws.onclose = null;
        if (result === "timeout") {
          this.#backgroundWebSocket(ws, started);
          resolve(result);
          return;
        }
        if (result !== "open" || this.#readyState !== BridgeSocket.CONNECTING) {
          try {
            ws.close();
          } catch {
            // already closing
          }
          resolve(result === "open" ? "failed" : result);
          return;
        }
        this.#adoptWebSocket(ws, started);
        resolve("open");
      };
      timer = setTimeout(() => settle("timeout"), timeoutMs);
      ws.onopen = () => settle("open");
      ws.onerror = () => settle("failed");
      ws.onclose = () => settle("failed");
    });
  }

  #adoptWebSocket(ws, started) {
    this.#ws = ws;
    this.#transport = "websocket";
    this.#protocol = ws.protocol;
    this.#extensions = ws.extensions;
    ws.binaryType = this.#binaryType;
    ws.onmessage = (e) => this.dispatchEvent(new MessageEvent("message", { data: e.data, origin: e.origin }));
    ws.onerror = () => this.dispatchEvent(new Event("error"));
    ws.onclose = (e) => {
      this.#readyState = BridgeSocket.CLOSED;
      this.dispatchEvent(new CloseEvent("close", { code: e.code, reason: e.reason, wasClean: e.wasClean }));
    };
    this.#readyState = BridgeSocket.OPEN;
    this.#announceOpen(started, null, started);
    this.dispatchEvent(new Event("open"));
  }

  #fetchInit(init) {
    return {
      credentials: this.#options.withCredentials ? "include" : "same-origin",
      cache: "no-store",
      signal: this.#closed.signal,
      ...init,
    };
  }

  // fetch() that gives up when the socket ends or after `timeoutMs`; the
  // body is read before the deadline is lifted.
  async #request(url, init, timeoutMs = REQUEST_TIMEOUT_MS) {
    const limit = deadline(this.#closed.signal, timeoutMs);
    try {
      const response = await fetch(url, { ...this.#fetchInit(init), signal: limit.signal });
      const body = await response.arrayBuffer();
      return { status: response.status, headers: response.headers, body };
    } finally {
      limit.done();
    }
  }

  async #openSession() {
    const body = JSON.stringify({ url: this.#target, protocols: this.#protocols });
    const started = Date.now();
    for (let attempt = 0; ; attempt++) {
      const headers = { "Content-Type": "application/json" };
      const traceparent = traceparentHeader(this.#options.traceparent);
      if (traceparent) headers.traceparent = traceparent;
      let response;
      try {
        response = await this.#request(
          this.#httpOrigin + this.#options.prefix + "/sessions",
          { method: "POST", headers, body },
          OPEN_REQUEST_TIMEOUT_MS,
        );
      } catch {
        if (this.#closed.signal.aborted) throw new BridgeOpenError("final", "closed");
        throw new BridgeOpenError("next", "the bridge is unreachable");
      }
      if (response.status === 201) {
        this.#openMs = Date.now() - started;
        const info = parseJson(response.body);
        if (!info || typeof info.session !== "string" || !info.links) {
          throw new BridgeOpenError("final", "the bridge answered the open with an unexpected body");
        }
        const links = {};
        for (const [key, link] of Object.entries(info.links)) {
          if (typeof link === "string") links[key] = new URL(link, this.#httpOrigin + "/").href;
        }
        const heartbeatMs = Number(info.heartbeat_ms) > 0 ? Number(info.heartbeat_ms) : DEFAULT_HEARTBEAT_MS;
        return { id: info.session, protocol: String(info.protocol || ""), heartbeatMs, links };
      }
      const error = parseJson(response.body) || {};
      const code = error.error || "unknown";
      if (response.status === 503 && attempt < OPEN_BUSY_RETRIES) {
        await sleep(retryDelayMs(response, attempt));
        if (this.#readyState !== BridgeSocket.CONNECTING) throw new BridgeOpenError("final", "closed");
        continue;
      }
      // 404 without upstream_rejected: no route, or the route does not bridge
      // (or no wsbridge at all): a later websocket transport may still work.
      // Everything else, an upstream refusal above all, is the answer a real
      // WebSocket would have got too.
      if (response.status === 404 && code !== "upstream_rejected") {
        throw new BridgeOpenError("next", `the bridge does not serve this URL (${response.status} ${code})`);
      }
      const upstream = code === "upstream_rejected" ? ` by the upstream (${error.status})` : "";
      throw new BridgeOpenError("final", `the session was refused${upstream}: ${response.status} ${code}`);
    }
  }

  // Starts the chosen transport's first connection: "open" once it proved
  // itself and the socket is open. SSE and stream must deliver a first event
  // (the proxy sends a heartbeat at once) within probeTimeout, else they are
  // "held": by an intermediary buffering the body, which often holds the
  // headers too ("held, no headers"; the open request just answered, so the
  // bridge itself is reachable and quick). Poll's first answer proves it,
  // within openTimeout ("timeout"). "failed" when the connection failed.
  #firstConnection(name, started, websocketFailed, connectStarted) {
    return new Promise((resolve) => {
      this.#sawHeaders = false;
      // On a slow link (the open request took long) the window stretches.
      const limit = name === "poll" ? this.#options.openTimeout : Math.max(this.#options.probeTimeout, 2 * this.#openMs);
      const timer = setTimeout(() => {
        this.#openWaiter = null;
        this.#detach();
        resolve(name === "poll" ? "timeout" : this.#sawHeaders ? "held" : "held, no headers");
      }, limit);
      this.#openWaiter = (ok) => {
        clearTimeout(timer);
        this.#openWaiter = null;
        // Open right here, synchronously: the events this connection
        // delivers next must find the socket OPEN, never CONNECTING.
        if (ok && this.#readyState === BridgeSocket.CONNECTING) {
          this.#protocol = this.#session.protocol;
          this.#readyState = BridgeSocket.OPEN;
          liveBridgeSockets.set(this, {
            goingAway: () => this.#deleteSessionQuietly(1001),
            offline: () => this.#dropped(this.#generation, {}),
            online: () => {
              if (!this.#reconnecting || this.#readyState !== BridgeSocket.OPEN) return;
              this.#reconnectFailures = 0;
              this.#attach();
            },
          });
          this.#announceOpen(started, websocketFailed, connectStarted);
          this.dispatchEvent(new Event("open"));
          resolve("open");
        } else {
          resolve("failed");
        }
      };
      this.#attach();
    });
  }

  // ------------------------------------------------------------- downstream

  // Opens a new downstream connection from the cursor, ending the old one.
  #attach() {
    this.#detach();
    const generation = this.#generation;
    // Also bounds the wait for the connection itself: a reused pooled
    // connection may be half-open and never answer.
    this.#armWatchdog();
    if (this.#transport === "sse") this.#attachSse(generation);
    else if (this.#transport === "stream") this.#attachStream(generation);
    else this.#attachPoll(generation);
  }

  // Ends the current downstream connection; its late callbacks are ignored.
  #detach() {
    this.#generation++;
    clearTimeout(this.#watchdog);
    clearTimeout(this.#reconnectTimer);
    this.#watchdog = null;
    this.#reconnectTimer = null;
    const stop = this.#stopReader;
    this.#stopReader = null;
    if (stop) stop();
  }

  // Response headers of the current connection arrived (for poll: its
  // first answer). Not yet proof that events get through: see #proven.
  #connected(generation) {
    if (generation !== this.#generation) return;
    this.#reconnectFailures = 0;
    this.#downSince = 0;
    this.#sawHeaders = true;
    this.#armWatchdog();
  }

  // The current connection delivered something (an event, a heartbeat, a
  // poll answer): it works. Opens the socket during the probe, or ends a
  // reconnect.
  #proven(generation) {
    if (generation !== this.#generation) return;
    if (this.#openWaiter) {
      this.#openWaiter(true);
      return;
    }
    if (this.#reconnecting && this.#readyState === BridgeSocket.OPEN) {
      this.#reconnecting = false;
      this.#dispatchState("resumed", `the ${this.#transport} connection is back, resumed from event ${this.#cursor}`);
    }
  }

  #dispatchState(type, reason) {
    const detail = { transport: this.#transport, reason };
    const event = typeof CustomEvent === "function" ? new CustomEvent(type, { detail }) : new Event(type);
    if (!("detail" in event)) Object.defineProperty(event, "detail", { value: detail });
    this.dispatchEvent(event);
  }

  #armWatchdog() {
    clearTimeout(this.#watchdog);
    // A poll request carries its own deadline.
    if (this.#transport === "poll") return;
    const generation = this.#generation;
    const ms = Math.max(MIN_WATCHDOG_MS, HEARTBEAT_TOLERANCE * this.#session.heartbeatMs);
    this.#watchdog = setTimeout(() => this.#dropped(generation, {}), ms);
  }

  // The current connection ended or failed. `gone`: the session no longer
  // exists; `fatal`: a reply that retrying cannot fix.
  #dropped(generation, { gone = false, fatal = null } = {}) {
    if (generation !== this.#generation) return;
    this.#detach();
    if (this.#openWaiter) {
      this.#openWaiter(false);
      return;
    }
    if (this.#readyState === BridgeSocket.CLOSED) return;
    if (gone) {
      this.#finish(1006, "", false, "wsbridge: the session no longer exists");
      return;
    }
    if (fatal) {
      this.#fail(fatal);
      return;
    }
    if (!this.#reconnecting && this.#readyState === BridgeSocket.OPEN) {
      this.#reconnecting = true;
      this.#dispatchState("reconnecting", `the ${this.#transport} connection dropped; reconnecting from event ${this.#cursor}`);
      // A listener may have closed the socket.
      if (this.#readyState !== BridgeSocket.OPEN) return;
    }
    const now = Date.now();
    if (!this.#downSince) this.#downSince = now;
    if (now - this.#downSince > this.#options.reconnectTimeout) {
      this.#fail("wsbridge: the bridge could not be reached again");
      return;
    }
    const delay = backoffMs(this.#reconnectFailures++);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      this.#attach();
    }, delay);
  }

  // A newer reader took over the session; by the protocol we must not fight
  // it by reconnecting.
  #superseded(generation) {
    if (generation !== this.#generation) return;
    this.#detach();
    if (this.#openWaiter) {
      this.#openWaiter(false);
      return;
    }
    this.#finish(1006, "", false, "wsbridge: another reader took over this session");
  }

  // One event from any downstream transport, in the poll/stream object form
  // (binary data still base64). Returns false when the reader must stop.
  #deliver(generation, event) {
    if (generation !== this.#generation) return false;
    this.#proven(generation);
    if (generation !== this.#generation) return false;
    this.#armWatchdog();
    const id = Number(event.id);
    // Already accounted for: a replay overlapping what we have.
    if (!(id > this.#cursor)) return true;
    if (event.type !== "gap" && id !== this.#cursor + 1) {
      // Ids are consecutive, so something was not delivered to us: over SSE,
      // named events from a proxy that ignores plain=1. Resume from the
      // cursor on a transport that carries every event. (A named event with
      // nothing after it stays unseen until the next event arrives.)
      const fallback = WSBRIDGE_BRIDGED.find((t) => t !== "sse" && this.#session.links[t]);
      if (this.#transport === "sse" && fallback) {
        this.#transport = fallback;
        queueMicrotask(() => this.#attach());
        this.#detach();
        this.#dispatchTransport("sse", `sse skipped event ids (an intermediary names events); resuming over ${fallback} from event ${this.#cursor}`);
        return false;
      }
    }
    this.#cursor = id;
    switch (event.type) {
      case "text":
        this.#message(String(event.data));
        break;
      case "binary": {
        const bytes = base64ToBytes(event.data);
        this.#message(this.#binaryType === "arraybuffer" ? bytes.buffer : new Blob([bytes]));
        break;
      }
      case "gap":
        this.#dispatchError(`wsbridge: events ${event.from}..${event.to} were lost before this page could read them`, {
          from: event.from,
          to: event.to,
        });
        break;
      case "close": {
        this.#detach();
        const code = Number(event.code) || 1005;
        this.#finish(code, String(event.reason || ""), code !== 1006, code === 1006 ? "wsbridge: the upstream connection was lost" : null);
        return false;
      }
      default:
        // An event kind from a newer proxy: counted, not shown.
        break;
    }
    return true;
  }

  #message(data) {
    // Like WebSocket: nothing is delivered once close() was called.
    if (this.#readyState !== BridgeSocket.OPEN) return;
    this.dispatchEvent(new MessageEvent("message", { data, origin: this.#wsOrigin }));
  }

  #attachSse(generation) {
    // plain=1 asks the proxy not to name text events after a JSON field
    // (route option sse_event_field): EventSource hands a named event only to
    // listeners of that name, which this client cannot know in advance.
    // heartbeat=event asks for heartbeats as named events too, which
    // EventSource (unlike comments) lets the watchdog see.
    const url = withQuery(this.#session.links.sse, { cursor: this.#cursor, plain: 1, heartbeat: "event" });
    const source = new EventSource(url, { withCredentials: this.#options.withCredentials });
    this.#stopReader = () => source.close();
    let opened = false;
    const on = (type, handler) =>
      source.addEventListener(type, (e) => {
        if (generation !== this.#generation) return;
        try {
          handler(e);
        } catch {
          // An undecodable event: reconnecting gets it again, so give up on
          // this connection rather than skip it.
          this.#dropped(generation, {});
        }
      });
    source.onopen = () => {
      opened = true;
      this.#connected(generation);
    };
    const id = (e) => Number(e.lastEventId);
    on("message", (e) => this.#deliver(generation, { id: id(e), type: "text", data: e.data }));
    // A text frame holding "\r" cannot travel as data lines; the proxy sends
    // the base64 of its UTF-8 bytes instead.
    on("text.b64", (e) => this.#deliver(generation, { id: id(e), type: "text", data: utf8Decode(base64ToBytes(e.data)) }));
    on("binary", (e) => this.#deliver(generation, { id: id(e), type: "binary", data: e.data }));
    on("gap", (e) => this.#deliver(generation, { id: id(e), type: "gap", ...JSON.parse(e.data) }));
    on("close", (e) => this.#deliver(generation, { id: id(e), type: "close", ...JSON.parse(e.data) }));
    on("superseded", () => this.#superseded(generation));
    // EventSource hides comment heartbeats; a proxy that also sends a named
    // heartbeat event keeps the watchdog quiet on idle sessions.
    on("heartbeat", () => {
      this.#armWatchdog();
      this.#proven(generation);
    });
    source.onerror = () => {
      if (generation !== this.#generation) return;
      // Reconnect ourselves (our cursor, our backoff) rather than after the
      // proxy's retry: interval.
      source.close();
      if (opened) this.#dropped(generation, {});
      else this.#probe(generation, url);
    };
  }

  // EventSource hides why a connection failed; ask once with fetch, so a
  // session that is gone (404) ends the socket instead of retrying forever.
  async #probe(generation, url) {
    const limit = deadline(this.#closed.signal, REQUEST_TIMEOUT_MS);
    let status = 0;
    try {
      const response = await fetch(url, { ...this.#fetchInit({}), signal: limit.signal });
      status = response.status;
    } catch {
      // network failure: retry below
    }
    // The probe must not stay on as the session's reader.
    limit.abort();
    limit.done();
    this.#dropped(generation, this.#failureOf(status));
  }

  #failureOf(status) {
    if (status === 404 || status === 410) return { gone: true };
    if (status >= 400 && status < 500 && status !== 429 && status !== 408) {
      return { fatal: `wsbridge: the bridge refused the connection (${status})` };
    }
    return {};
  }

  #attachStream(generation) {
    const controller = new AbortController();
    this.#stopReader = () => controller.abort();
    // heartbeat=now: a first heartbeat at once, which the probe waits for.
    const url = withQuery(this.#session.links.stream, { cursor: this.#cursor, heartbeat: "now" });
    (async () => {
      let response;
      try {
        response = await fetch(url, {
          ...this.#fetchInit({ headers: { Accept: "application/x-ndjson" } }),
          signal: controller.signal,
        });
      } catch {
        this.#dropped(generation, {});
        return;
      }
      if (!response.ok || !response.body) {
        this.#dropped(generation, this.#failureOf(response.status));
        return;
      }
      this.#connected(generation);
      const reader = response.body.getReader();
      const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
      let buffer = "";
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done || generation !== this.#generation) break;
          buffer += decoder.decode(value, { stream: true });
          let start = 0;
          let end;
          while ((end = buffer.indexOf("\n", start)) >= 0) {
            const line = buffer.slice(start, end);
            start = end + 1;
            if (line.trim() && !this.#streamLine(generation, JSON.parse(line))) {
              controller.abort();
              return;
            }
          }
          buffer = buffer.slice(start);
        }
      } catch {
        // dropped connection or a torn line: resume from the cursor
      }
      controller.abort();
      this.#dropped(generation, {});
    })();
  }

  // Returns false when the reader must stop.
  #streamLine(generation, object) {
    if (generation !== this.#generation) return false;
    // The prelude pads the response past buffering proxies: not an event.
    if (object.type === "heartbeat" || object.type === "prelude") {
      this.#armWatchdog();
      this.#proven(generation);
      return true;
    }
    // Padding that defeats small buffers in front of the stream: no event,
    // and no proof that events get through (a heartbeat follows at once).
    if (object.type === "prelude") return true;
    if (object.type === "superseded") {
      this.#superseded(generation);
      return false;
    }
    return this.#deliver(generation, object);
  }

  #attachPoll(generation) {
    const controller = new AbortController();
    this.#stopReader = () => controller.abort();
    (async () => {
      // The first request asks for no wait: it proves the transport works.
      let wait = 0;
      while (generation === this.#generation) {
        const url = withQuery(this.#session.links.poll, { cursor: this.#cursor, wait });
        const deadline = setTimeout(() => controller.abort(), wait * 1000 + POLL_SLACK_MS);
        let response;
        let body = null;
        try {
          response = await fetch(url, { ...this.#fetchInit({}), signal: controller.signal });
          if (response.ok) body = await response.json();
        } catch {
          clearTimeout(deadline);
          this.#dropped(generation, {});
          return;
        }
        clearTimeout(deadline);
        if (!response.ok || !body) {
          this.#dropped(generation, this.#failureOf(response.status));
          return;
        }
        if (wait === 0) {
          this.#connected(generation);
          this.#proven(generation);
          if (generation !== this.#generation) return;
        }
        for (const event of body.events || []) {
          if (!this.#deliver(generation, event)) return;
        }
        if (body.superseded) {
          this.#superseded(generation);
          return;
        }
        wait = POLL_WAIT_S;
      }
    })();
  }

  // --------------------------------------------------------------- upstream

  // Sends queued frames one at a time, in order.
  async #pump() {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (this.#queue.length && !this.#sendsStopped && this.#readyState !== BridgeSocket.CLOSED) {
        const frame = this.#queue[0];
        if (frame.blob) {
          try {
            frame.body = new Uint8Array(await frame.blob.arrayBuffer());
          } catch {
            this.#fail("wsbridge: a Blob given to send() could not be read");
            break;
          }
          frame.blob = null;
        }
        if (!frame.seq) frame.seq = ++this.#seq;
        if (!(await this.#post(frame))) break;
        this.#queue.shift();
        this.#buffered -= frame.size;
      }
    } finally {
      this.#pumping = false;
      const waiters = this.#flushWaiters;
      this.#flushWaiters = [];
      for (const wake of waiters) wake();
    }
  }

  // POSTs one frame until the proxy acknowledges it; false when sending must
  // stop (the session is closed or gone, or the socket ended).
  async #post(frame) {
    for (let failures = 0; ; failures++) {
      if (this.#readyState === BridgeSocket.CLOSED) return false;
      let response = null;
      try {
        response = await this.#request(this.#session.links.send, {
          method: "POST",
          headers: {
            "Content-Type": frame.binary ? "application/octet-stream" : "text/plain;charset=UTF-8",
            "Bridge-Seq": String(frame.seq),
          },
          body: frame.body,
        });
      } catch {
        if (this.#closed.signal.aborted) return false;
        // The request or its answer was lost, or it hung: the same
        // Bridge-Seq again makes a second delivery harmless.
      }
      if (response) {
        const status = response.status;
        // 200 is {"duplicate": true}: an earlier try got through.
        if (status === 204 || status === 200) return true;
        if (status === 410) {
          // Closed: its close event is on the way down.
          this.#sendsStopped = true;
          return false;
        }
        if (status === 404) {
          this.#sendsStopped = true;
          this.#finish(1006, "", false, "wsbridge: the session no longer exists");
          return false;
        }
        if (status === 413) {
          this.#sendsStopped = true;
          this.#fail("wsbridge: a frame was larger than the bridge accepts", 1009);
          return false;
        }
        if (status === 409) {
          this.#sendsStopped = true;
          this.#fail("wsbridge: the bridge lost track of this socket's frame order (409)");
          return false;
        }
        if (status !== 429 && status !== 408 && status < 500) {
          this.#sendsStopped = true;
          this.#fail(`wsbridge: the bridge refused a frame (${status})`);
          return false;
        }
      }
      await sleep(retryDelayMs(response, failures));
    }
  }

  // Resolves when the send queue is empty (or sending stopped), or at timeout.
  #flushSends(timeoutMs) {
    if (!this.#pumping || !this.#queue.length) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.#flushWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  // ---------------------------------------------------------------- closing

  // close() on an open bridged socket: pending frames first (as a WebSocket
  // sends queued data before its close frame), then DELETE, then the
  // session's close event arrives downstream and ends the socket.
  async #closeSession(code, reason) {
    await this.#flushSends(CLOSE_FLUSH_TIMEOUT_MS);
    if (this.#readyState === BridgeSocket.CLOSED) return;
    this.#closeTimer = setTimeout(
      () => this.#finish(1006, "", false, "wsbridge: the session's close was not confirmed in time"),
      CLOSE_EVENT_TIMEOUT_MS,
    );
    const url = withQuery(this.#session.links.close, { code, reason: code === undefined ? undefined : reason });
    for (let failures = 0; this.#readyState === BridgeSocket.CLOSING; failures++) {
      let response = null;
      try {
        response = await this.#request(url, { method: "DELETE" });
      } catch {
        // retry below, until the close timer ends the socket
      }
      if (response && (response.status === 204 || response.status === 200)) return;
      if (response && response.status === 404) {
        this.#finish(1006, "", false, "wsbridge: the session no longer exists");
        return;
      }
      if (response && response.status === 410) return;
      if (response && response.status < 500 && response.status !== 429) {
        this.#finish(1006, "", false, `wsbridge: the bridge refused to close the session (${response.status})`);
        return;
      }
      await sleep(retryDelayMs(response, failures));
    }
  }

  // Best effort, not tied to this socket's lifetime (keepalive outlives the
  // page).
  #deleteSessionQuietly(code) {
    const session = this.#session;
    if (!session || !session.links.close) return;
    const url = code ? withQuery(session.links.close, { code }) : session.links.close;
    fetch(url, {
      method: "DELETE",
      keepalive: true,
      credentials: this.#options.withCredentials ? "include" : "same-origin",
    }).catch(() => null);
  }

  // A local failure on an open socket: the session is closed upstream too.
  #fail(message, code = 1006) {
    if (this.#readyState === BridgeSocket.CLOSED) return;
    this.#deleteSessionQuietly();
    this.#finish(code, "", false, message);
  }

  #dispatchError(message, details) {
    const init = { message };
    const event = typeof ErrorEvent === "function" ? new ErrorEvent("error", init) : new Event("error");
    if (!("message" in event)) Object.defineProperty(event, "message", { value: message });
    if (details) {
      for (const [key, value] of Object.entries(details)) Object.defineProperty(event, key, { value, enumerable: true });
    }
    this.dispatchEvent(event);
  }

  // The one way a bridged socket ends: the close event fires exactly once.
  #finish(code, reason, wasClean, errorMessage) {
    if (this.#readyState === BridgeSocket.CLOSED) return;
    this.#readyState = BridgeSocket.CLOSED;
    liveBridgeSockets.delete(this);
    clearTimeout(this.#closeTimer);
    clearTimeout(this.#reprobeTimer);
    this.#reconnecting = false;
    this.#detach();
    if (this.#openWaiter) this.#openWaiter(false);
    this.#closed.abort();
    this.#queue = [];
    if (errorMessage) this.#dispatchError(errorMessage);
    this.dispatchEvent(new CloseEvent("close", { code, reason, wasClean }));
  }
}

// A matcher of absolute ws(s) URLs for installWebSocketShim.
function webSocketUrlMatcher(match) {
  if (match === undefined || match === null) {
    const host = globalThis.location ? globalThis.location.host : null;
    return (url) => host !== null && new URL(url).host === host;
  }
  if (typeof match === "function") return (url) => Boolean(match(url));
  if (match instanceof RegExp) {
    return (url) => {
      match.lastIndex = 0;
      return match.test(url);
    };
  }
  // A prefix may be written as http(s):, like the page's own URLs.
  const prefix = String(match).replace(/^http(s?):/i, "ws$1:");
  return (url) => url.startsWith(prefix);
}

/**
 * Replaces globalThis.WebSocket so that `new WebSocket(url)` returns a
 * BridgeSocket for matching URLs and a native WebSocket otherwise. Returns a
 * function that restores the previous constructor.
 */
function installWebSocketShim(match, options) {
  const previous = globalThis.WebSocket;
  const Native = unwrapNativeWebSocket(previous);
  const matches = webSocketUrlMatcher(match);
  // The shim's sockets still try a real WebSocket first, with the native
  // constructor, never with the shim.
  const bridgeOptions = { ...(options || {}), WebSocket: Native };

  function WebSocket(url, protocols) {
    if (!new.target) throw new TypeError("Failed to construct 'WebSocket': Please use the 'new' operator.");
    const absolute = resolveWebSocketUrl(url);
    if (matches(absolute) || !Native) return new BridgeSocket(absolute, protocols, bridgeOptions);
    return protocols === undefined ? new Native(url) : new Native(url, protocols);
  }
  Object.defineProperty(WebSocket, WSBRIDGE_NATIVE, { value: Native });
  for (const [name, value] of [["CONNECTING", 0], ["OPEN", 1], ["CLOSING", 2], ["CLOSED", 3]]) {
    Object.defineProperty(WebSocket, name, { value, enumerable: true });
  }
  if (Native) WebSocket.prototype = Native.prototype;
  // `socket instanceof WebSocket` holds for both kinds the shim returns.
  Object.defineProperty(WebSocket, Symbol.hasInstance, {
    value: (value) => value instanceof BridgeSocket || (Native !== null && value instanceof Native),
  });
  globalThis.WebSocket = WebSocket;
  return function uninstall() {
    if (globalThis.WebSocket === WebSocket) globalThis.WebSocket = previous;
  };
}
