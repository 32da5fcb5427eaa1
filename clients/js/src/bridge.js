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
  // Bridged sockets share one multiplexed channel per bridge (see "sharing"
  // below): in a SharedWorker, else a leader tab, else this tab's own hub.
  share: true,
  shareMode: "auto",
  // The SharedWorker's script; default the proxy's {prefix}/client.js.
  workerUrl: null,
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

// The NDJSON stream's lines, from decoded text in the chunks it arrived in; a
// line torn across chunks waits in the tail for the rest. Each line is parsed
// only when the reader asks for it, so every line before a torn or invalid
// one has been handled when its JSON.parse throws.
class NdjsonLines {
  #tail = "";

  *push(text) {
    const buffer = this.#tail + text;
    let start = 0;
    let end;
    while ((end = buffer.indexOf("\n", start)) >= 0) {
      const line = buffer.slice(start, end);
      start = end + 1;
      if (line.trim()) yield JSON.parse(line);
    }
    this.#tail = buffer.slice(start);
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
  const shareMode = String(o.shareMode);
  if (!SHARE_MODES.includes(shareMode)) throw new TypeError(`wsbridge: unknown shareMode '${shareMode}'`);
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
    share: o.share !== false,
    shareMode,
    workerUrl: o.workerUrl ? String(o.workerUrl) : null,
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

  // Sharing (see HubClient): set while the session is on a shared channel.
  #shared = null; // frozen { mode, channel }, what socket.shared returns
  #hubClient = null;
  #shareKey = null;
  #joinWaiter = null; // handles the hub's answers while joining
  #forwardedFrames = 0; // frames handed to the hub, not yet acknowledged
  #forwardedBytes = 0;
  #pumpAgain = false;
  #pollReprobeTimer = null;

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
  /** null, or { mode: "worker" | "tabs" | "tab", channel } while the socket's
   *  session is on a shared channel. */
  get shared() { return this.#shared; }
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
    let shareTried = !this.#options.share;
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
        if (!shareTried) {
          // The shared channel's hub tries the bridged transports left, in
          // this order, for its one reader (or has one already).
          shareTried = true;
          const rest = plan.order.slice(plan.order.indexOf(name)).filter((t) => WSBRIDGE_BRIDGED.includes(t) && this.#session.links[t]);
          const shared = await this.#joinShared(rest, started, websocketFailed, connectStarted);
          if (shared === "open") return;
          if (this.#readyState !== BridgeSocket.CONNECTING) break;
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
    if (this.#transport === "poll" && !this.#shared) this.#schedulePollReprobe();
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
    return this.#handleEvent(event);
  }

  // One new event, its id now the cursor: to the page. False after close.
  #handleEvent(event) {
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
      const lines = new NdjsonLines();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done || generation !== this.#generation) break;
          for (const object of lines.push(decoder.decode(value, { stream: true }))) {
            if (!this.#streamLine(generation, object)) {
              controller.abort();
              return;
            }
          }
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
    if (this.#shared) {
      this.#pumpShared();
      return;
    }
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
      this.#wakeFlushWaiters();
    }
  }

  #wakeFlushWaiters() {
    const waiters = this.#flushWaiters;
    this.#flushWaiters = [];
    for (const wake of waiters) wake();
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
    if (!this.#queue.length || this.#sendsStopped || (!this.#shared && !this.#pumping)) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.#flushWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  // ----------------------------------------------------------------- shared

  // Puts the open session on the shared channel: "open" once the hub has
  // attached it and its reader works, else "unavailable" (the socket then
  // reads on its own, as with share: false).
  #joinShared(order, started, websocketFailed, connectStarted) {
    let client;
    try {
      client = HubClient.for(this.#httpOrigin, this.#options);
    } catch {
      return Promise.resolve("unavailable");
    }
    this.#hubClient = client;
    this.#shareKey = client.newKey();
    const pending = []; // events that came before `joined`
    return new Promise((resolve) => {
      const probe = Math.max(this.#options.probeTimeout, 2 * this.#openMs);
      const timer = setTimeout(() => settle("unavailable"), WORKER_ANSWER_TIMEOUT_MS + this.#options.openTimeout + 3 * probe);
      const settle = (result) => {
        clearTimeout(timer);
        this.#joinWaiter = null;
        if (result !== "open") {
          client.leave(this.#shareKey);
          this.#hubClient = null;
          this.#shareKey = null;
        }
        resolve(result);
      };
      this.#joinWaiter = (m) => {
        if (m.t === "events") {
          pending.push(m);
          return;
        }
        if (m.t === "unjoined" || m.t === "gone") {
          for (const a of m.attempts || []) if (a.result !== "open") this.#attempts.push(a);
          settle("unavailable");
          return;
        }
        if (m.t !== "joined") return;
        if (this.#readyState !== BridgeSocket.CONNECTING) {
          settle("unavailable");
          return;
        }
        settle("open");
        for (const a of m.attempts || []) if (a.result !== "open") this.#attempts.push(a);
        this.#shared = Object.freeze({ mode: client.mode, channel: m.channel });
        this.#transport = m.transport;
        this.#protocol = this.#session.protocol;
        this.#readyState = BridgeSocket.OPEN;
        liveBridgeSockets.set(this, {
          goingAway: () => this.#deleteSessionQuietly(1001),
          // The shared reader is the hub's: it hears what the tab heard.
          offline: () => this.#hubClient && this.#hubClient.post({ t: "offline" }),
          online: () => this.#hubClient && this.#hubClient.post({ t: "online" }),
        });
        this.#announceOpen(started, websocketFailed, connectStarted);
        this.dispatchEvent(new Event("open"));
        if (m.reconnecting && this.#readyState === BridgeSocket.OPEN) this.#sharedMessage({ t: "state", state: "reconnecting", reason: "the shared connection dropped" });
        for (const p of pending) this.#sharedMessage(p);
        this.#pump();
      };
      client.join(this.#shareHandle(order));
    });
  }

  // What the hub client needs of this socket: its key, its (re)join message
  // with the cursor and the frames handed over but not acknowledged (sent
  // again with their own seq: the proxy dedupes), and a sink for messages.
  #shareHandle(order) {
    const key = this.#shareKey;
    const links = {};
    for (const t of WSBRIDGE_BRIDGED) links[t] = Boolean(this.#session.links[t]);
    const handle = {
      key,
      joinMessage: (takeover) => {
        if (takeover && this.#shared && this.#readyState === BridgeSocket.OPEN && !this.#reconnecting) {
          this.#reconnecting = true;
          this.#dispatchState("reconnecting", `the shared channel's hub went away; a new one takes over from event ${this.#cursor}`);
        }
        const frames = this.#queue.filter((f) => f.forwarded).map((f) => f.wire);
        // After a takeover, `channel` names the dead hub's channel, which
        // the new hub ends once this session is off it.
        const channel = takeover && this.#shared ? this.#shared.channel : null;
        return { t: "join", key, session: this.#session.id, cursor: this.#cursor, order, links, frames, channel, close: handle.goingAwayUrl() };
      },
      receive: (m) => (this.#joinWaiter ? this.#joinWaiter(m) : this.#sharedMessage(m)),
      // What closes the session when the page goes away (see HubClient).
      goingAwayUrl: () => (this.#session && this.#session.links.close ? withQuery(this.#session.links.close, { code: 1001 }) : null),
    };
    return handle;
  }

  #sharedMessage(m) {
    if (this.#readyState === BridgeSocket.CLOSED || !this.#hubClient) return;
    switch (m.t) {
      case "events": {
        for (const event of m.events || []) {
          // Ids at or below the cursor were delivered already (a replay
          // after a takeover): dropped here whatever the hub did.
          const id = Number(event.id);
          if (!(id > this.#cursor)) continue;
          this.#cursor = id;
          if (!this.#handleEvent(event)) return;
          if (this.#readyState === BridgeSocket.CLOSED) return;
        }
        if (this.#hubClient) this.#hubClient.post({ t: "ack", key: this.#shareKey, session: this.#session.id, cursor: this.#cursor });
        break;
      }
      case "sent": {
        while (this.#queue.length && this.#queue[0].forwarded && this.#queue[0].seq <= m.seq) {
          const frame = this.#queue.shift();
          this.#buffered -= frame.size;
          this.#forwardedBytes -= frame.size;
          this.#forwardedFrames--;
        }
        this.#pump();
        if (!this.#queue.length) this.#wakeFlushWaiters();
        break;
      }
      case "sendfail":
        this.#sendsStopped = true;
        this.#wakeFlushWaiters();
        if (m.status === 410) break; // closed: its close event is on the way down
        if (m.status === 404) this.#finish(1006, "", false, "wsbridge: the session no longer exists");
        else if (m.status === 413) this.#fail("wsbridge: a frame was larger than the bridge accepts", 1009);
        else if (m.status === 409) this.#fail("wsbridge: the bridge lost track of this socket's frame order (409)");
        else this.#fail(`wsbridge: the bridge refused a frame (${m.status}${m.error ? " " + m.error : ""})`);
        break;
      case "gone":
        if (m.fail) this.#fail(m.reason || "wsbridge: the bridge could not be reached again");
        else this.#finish(1006, "", false, m.reason || "wsbridge: the session no longer exists");
        break;
      case "joined":
        // Taken over by a new hub, at our cursor.
        this.#shared = Object.freeze({ mode: this.#hubClient.mode, channel: m.channel });
        if (m.transport !== this.#transport) {
          const previous = this.#transport;
          this.#transport = m.transport;
          this.#dispatchTransport(previous, `the new hub reads the shared channel over ${m.transport}`);
        }
        if (this.#reconnecting && !m.reconnecting) {
          this.#reconnecting = false;
          this.#dispatchState("resumed", `a new hub took over the shared channel, resumed from event ${this.#cursor}`);
        }
        this.#pump();
        break;
      case "unjoined":
        this.#goSolo();
        break;
      case "state":
        if (this.#readyState !== BridgeSocket.OPEN) break;
        if (m.state === "reconnecting" && !this.#reconnecting) {
          this.#reconnecting = true;
          this.#dispatchState("reconnecting", `${m.reason}; reconnecting from event ${this.#cursor}`);
        } else if (m.state === "resumed" && this.#reconnecting) {
          this.#reconnecting = false;
          this.#dispatchState("resumed", `${m.reason}, resumed from event ${this.#cursor}`);
        }
        break;
      case "transport":
        if (m.transport && m.transport !== this.#transport) {
          const previous = this.#transport;
          this.#transport = m.transport;
          this.#dispatchTransport(previous, m.reason);
        }
        break;
      case "channel":
        if (this.#shared) this.#shared = Object.freeze({ mode: this.#shared.mode, channel: m.channel });
        break;
      case "memory":
        // The tab writes what the hub learned (a worker has no localStorage).
        if (this.#options.remember && this.#options.transports.length > 1 && this.#options.transports.includes(m.transport)) writeMemory(this.#memoryKey, { transport: m.transport, at: Date.now() });
        break;
      default:
        break;
    }
  }

  // The hub could not take this socket again (after a takeover): it reads
  // on its own from its cursor, and sends on its own from its first
  // unacknowledged frame (same seq, so nothing is doubled).
  #goSolo() {
    if (this.#hubClient) this.#hubClient.leave(this.#shareKey);
    this.#hubClient = null;
    this.#shared = null;
    const name = WSBRIDGE_BRIDGED.find((t) => this.#session.links[t] && this.#options.transports.includes(t));
    if (!name) {
      this.#fail("wsbridge: the shared channel lost this socket and no transport of its own is offered");
      return;
    }
    for (const frame of this.#queue) frame.forwarded = false;
    this.#forwardedFrames = 0;
    this.#forwardedBytes = 0;
    const previous = this.#transport;
    this.#transport = name;
    this.#dispatchTransport(previous, `the shared channel could not take this socket again; reading on its own over ${name} from event ${this.#cursor}`);
    this.#attach();
    this.#pump();
  }

  // Hands queued frames to the hub in order, within the send window; the
  // hub batches them with other sockets' frames.
  async #pumpShared() {
    if (this.#pumping) {
      this.#pumpAgain = true;
      return;
    }
    this.#pumping = true;
    try {
      for (let i = 0; i < this.#queue.length; i++) {
        if (!this.#shared || this.#sendsStopped || this.#readyState === BridgeSocket.CLOSED) break;
        const frame = this.#queue[i];
        if (frame.forwarded) continue;
        if (this.#forwardedFrames >= SHARED_SEND_WINDOW_FRAMES || (this.#forwardedFrames && this.#forwardedBytes + frame.size > SHARED_SEND_WINDOW_BYTES)) break;
        if (frame.blob) {
          try {
            frame.body = new Uint8Array(await frame.blob.arrayBuffer());
          } catch {
            this.#fail("wsbridge: a Blob given to send() could not be read");
            break;
          }
          frame.blob = null;
          i = this.#queue.indexOf(frame);
          if (i < 0 || !this.#shared) break;
        }
        if (!frame.seq) frame.seq = ++this.#seq;
        frame.wire = { seq: frame.seq, type: frame.binary ? "binary" : "text", data: frame.binary ? bytesToBase64(frame.body) : utf8Decode(frame.body) };
        frame.forwarded = true;
        this.#forwardedFrames++;
        this.#forwardedBytes += frame.size;
        this.#hubClient.post({ t: "frames", key: this.#shareKey, session: this.#session.id, frames: [frame.wire] });
      }
    } finally {
      this.#pumping = false;
      if (this.#pumpAgain) {
        this.#pumpAgain = false;
        queueMicrotask(() => this.#pump());
      }
    }
  }

  // While on poll by itself, now and then: would SSE or stream deliver now
  // (a throwaway channel's first event, see probeStreamingTransport)? If so
  // the next load starts there. The live socket stays on poll.
  #schedulePollReprobe() {
    const every = this.#options.reprobeInterval;
    if (!(every > 0) || !this.#options.remember || this.#options.transports.length < 2) return;
    clearTimeout(this.#pollReprobeTimer);
    this.#pollReprobeTimer = setTimeout(async () => {
      if (this.#readyState !== BridgeSocket.OPEN || this.#transport !== "poll" || this.#shared) return;
      // Sockets of every tab share the memory: one probe per interval.
      const memory = readMemory(this.#memoryKey, Infinity) || {};
      if (!(Date.now() - (Number(memory.streamProbedAt) || 0) < every)) {
        writeMemory(this.#memoryKey, { streamProbedAt: Date.now() });
        const order = this.#options.transports.filter((t) => (t === "sse" || t === "stream") && this.#session.links[t]);
        const found = order.length ? await probeStreamingTransport(this.#httpOrigin, this.#options.prefix, this.#options.withCredentials, this.#options.probeTimeout, order) : null;
        if (found) writeMemory(this.#memoryKey, { transport: found, at: Date.now() });
      }
      this.#schedulePollReprobe();
    }, every);
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
    clearTimeout(this.#pollReprobeTimer);
    this.#reconnecting = false;
    this.#detach();
    if (this.#openWaiter) this.#openWaiter(false);
    if (this.#joinWaiter) this.#joinWaiter({ t: "gone" });
    if (this.#hubClient) this.#hubClient.leave(this.#shareKey);
    this.#hubClient = null;
    this.#shared = null;
    this.#closed.abort();
    this.#queue = [];
    if (errorMessage) this.#dispatchError(errorMessage);
    this.dispatchEvent(new CloseEvent("close", { code, reason, wasClean }));
  }
}

// ------------------------------------------------------------------ sharing
//
// Bridged sockets share one multiplexed channel (docs/protocol.md,
// "Multiplexed channel") per bridge origin and prefix and browser profile:
// one reader and one send POST at a time for every socket of every tab, so
// HTTP/1.1's six connections per host are never used up by sockets. The
// channel is owned by a hub (ChannelHub) that runs in a SharedWorker, else
// in one leader tab elected with Web Locks and reached over
// BroadcastChannel, else in each tab on its own. A tab (HubClient) keeps,
// per socket, the id of the last event it delivered to the page and the
// frames not yet acknowledged, so a new hub (the leader tab went away) can
// take every session over at the tab's cursor and resend those frames with
// their own Bridge-Seq: nothing lost or doubled.

const SHARE_MODES = ["auto", "worker", "tabs"];
// A SharedWorker that has not answered within this is presumed broken (a
// script that failed to load, a worker blocked by policy): leader-tab mode.
const WORKER_ANSWER_TIMEOUT_MS = 3000;
// The hub's per-session backlog: events handed to a tab and not yet
// acknowledged by it. Past either bound the session is detached from the
// channel, so its events wait in the proxy's replay queue (which then pauses
// that session's upstream alone), until its tab catches up.
const HUB_BACKLOG_EVENTS = 1024;
const HUB_BACKLOG_BYTES = 1 << 20;
// What one socket may have handed to the hub and not yet seen acknowledged;
// the rest waits in the tab (counted in bufferedAmount, as today).
const SHARED_SEND_WINDOW_FRAMES = 256;
const SHARED_SEND_WINDOW_BYTES = 1 << 20;
// One batch POST: below the proxy's defaults (256 frames, 4 MiB); halved on
// a 413 for the whole batch.
const BATCH_MAX_FRAMES = 128;
const BATCH_MAX_BYTES = 1 << 20;
// Before the next channel poll, how long to wait for tabs to acknowledge
// what the last one brought (an unacknowledged cursor would fetch it again).
const POLL_ACK_WAIT_MS = 200;
// Leader-tab mode: at most this many sessions of another tab are kept for
// closing should it go (see HubClient#peers).
const PEER_SESSIONS_MAX = 256;

// `url` when it is a string on `origin`, else null: what another tab or a
// tab's message names is never fetched elsewhere.
function sameOriginUrl(url, origin) {
  return typeof url === "string" && url.startsWith(origin + "/") ? url : null;
}

// A session's DELETE that outlives the page (keepalive), errors ignored.
function closeQuietly(url, withCredentials) {
  fetch(url, { method: "DELETE", keepalive: true, credentials: withCredentials ? "include" : "same-origin" }).catch(() => null);
}

function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

// Two client versions never share a hub: the name carries the version.
function hubName(httpOrigin, prefix) {
  return `wsbridge:${WSBRIDGE_VERSION}:${httpOrigin}${prefix}`;
}

function inSharedWorker() {
  return typeof globalThis.SharedWorkerGlobalScope === "function" && globalThis instanceof globalThis.SharedWorkerGlobalScope;
}

function dispatchDetail(target, type, detail) {
  const event = typeof CustomEvent === "function" ? new CustomEvent(type, { detail }) : new Event(type);
  if (!("detail" in event)) Object.defineProperty(event, "detail", { value: detail });
  target.dispatchEvent(event);
}

// Whether SSE or stream would deliver now, for a socket or hub on poll: a
// throwaway channel (no session on it) is opened and read until its first
// event (SSE's immediate heartbeat, stream's prelude), then aborted and
// deleted. Disturbs nothing live. Resolves the transport that works, or null.
async function probeStreamingTransport(origin, prefix, withCredentials, timeoutMs, order) {
  const credentials = withCredentials ? "include" : "same-origin";
  let channel;
  try {
    const response = await fetch(origin + prefix + "/channels", { method: "POST", credentials, cache: "no-store" });
    channel = response.status === 201 ? await response.json() : null;
  } catch {
    channel = null;
  }
  if (!channel || !channel.links) return null;
  const link = (name) => (channel.links[name] ? new URL(channel.links[name], origin + "/").href : null);
  let found = null;
  for (const name of order) {
    if (name !== "sse" && name !== "stream") continue;
    const url = link(name);
    if (!url) continue;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const query = name === "sse" ? { heartbeat: "event" } : {};
      const response = await fetch(withQuery(url, query), { credentials, cache: "no-store", signal: controller.signal });
      if (response.ok && response.body) {
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let text = "";
        while (!found) {
          const { done, value } = await reader.read();
          if (done) break;
          text += decoder.decode(value, { stream: true });
          // SSE: the heartbeat event after the prelude; stream: the prelude line.
          if (name === "sse" ? text.includes("event: heartbeat") : text.includes("\n")) found = name;
        }
      }
    } catch {
      // held or failed: not this one
    }
    clearTimeout(timer);
    controller.abort();
    if (found) break;
  }
  const close = link("close");
  if (close) fetch(close, { method: "DELETE", credentials, cache: "no-store" }).catch(() => null);
  return found;
}

// The owner of one channel, for every socket of the tabs connected to it.
// Tabs talk to it in messages (`t` their kind), wherever it runs:
//   tab -> hub: hello, join {key, session, cursor, order, links, frames},
//               frames {key, frames}, ack {key, cursor}, leave {key}, bye
//   hub -> tab: hub, joined {key, channel, transport, attempts},
//               unjoined {key, reason}, events {key, events}, sent {key, seq},
//               sendfail {key, seq, status, error}, gone {key, reason},
//               state {state, transport, reason}, transport {...},
//               channel {channel}, memory {transport}
class ChannelHub {
  #config; // origin, prefix, withCredentials, probeTimeout, openTimeout, reconnectTimeout, reprobeInterval
  #mode;
  #id = randomId();
  #clients = new Map(); // tab id -> post(message)
  // session id -> { id, tab, key, acked, received, backlog, backlogBytes,
  //   paused (detached by us for backpressure), queue, queuedSeq, retryAt }
  #sessions = new Map();
  #channel = null; // { id, heartbeatMs, links }
  #channelPromise = null;
  #transport = null;
  #attempts = [];
  #choosing = null; // the first transport choice, while it runs
  #generation = 0; // bumped per reader connection; stale callbacks compare it
  #stopReader = null;
  #watchdog = null;
  #reconnectTimer = null;
  #failures = 0;
  #downSince = 0;
  #reconnecting = false;
  #proofWaiter = null; // resolves the probe of a first connection
  #sawHeaders = false;
  #sending = false;
  #sendTimer = null;
  #batchFrames = BATCH_MAX_FRAMES;
  #batchBytes = BATCH_MAX_BYTES;
  #ackWaiters = [];
  #reprobeTimer = null;
  #renewing = null; // a replacement channel being opened
  #endedChannels = new Set(); // dead hubs' channels this hub has ended

  constructor(config, mode) {
    this.#config = config;
    this.#mode = mode;
  }

  get id() { return this.#id; }

  has(tab) {
    return this.#clients.has(tab);
  }

  // A tab connected; `post` reaches it. `announce`: tell it who we are now
  // (else it asks with a hello).
  connect(tab, post, announce = true) {
    this.#clients.set(tab, post);
    if (announce) this.hello(tab);
  }

  hello(tab) {
    this.#post(tab, { t: "hub", hub: this.#id, mode: this.#mode });
  }

  // A tab went away: its sessions leave the channel. After a bye the tab
  // closed them itself, by a keepalive DELETE; when its lifetime lock says
  // it is `gone` without one (a crash, a page closed without pagehide),
  // the hub closes them, so they do not wait for the idle timeout.
  disconnect(tab, gone = false) {
    this.#clients.delete(tab);
    for (const s of Array.from(this.#sessions.values())) {
      if (s.tab !== tab) continue;
      this.#forget(s, !gone);
      if (gone && s.close) closeQuietly(s.close, this.#config.withCredentials);
    }
  }

  receive(tab, m) {
    if (!m || typeof m !== "object") return;
    if (m.t === "bye") {
      this.disconnect(tab);
      return;
    }
    const s = m.session ? this.#sessions.get(m.session) : this.#byKey(tab, m.key);
    switch (m.t) {
      case "join":
        this.#join(tab, m);
        break;
      case "frames":
        if (s) {
          this.#queueFrames(s, m.frames);
          this.#pump();
        }
        break;
      case "ack":
        if (s) this.#ack(s, Number(m.cursor));
        break;
      case "leave":
        if (s) this.#forget(s, true);
        break;
      // A tab's browser went offline or online: as a socket alone, drop the
      // reader at once, or reconnect without waiting for the backoff.
      case "offline":
        if (!this.#reconnecting && this.#transport && !this.#proofWaiter) this.#dropped(this.#generation, null);
        break;
      case "online":
        if (this.#reconnecting && this.#reconnectTimer) {
          this.#failures = 0;
          this.#read();
        }
        break;
      default:
        break;
    }
  }

  #byKey(tab, key) {
    for (const s of this.#sessions.values()) if (s.tab === tab && s.key === key) return s;
    return null;
  }

  #post(tab, message) {
    const post = this.#clients.get(tab);
    if (post) post(message);
  }

  #broadcast(message) {
    for (const post of this.#clients.values()) post(message);
  }

  #forget(s, detach) {
    if (this.#sessions.get(s.id) !== s) return;
    this.#sessions.delete(s.id);
    if (detach && this.#channel && !s.closed) this.#request(this.#channel.links.detach, this.#json({ session: s.id })).catch(() => null);
  }

  #json(body) {
    return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }

  async #request(url, init, timeoutMs = REQUEST_TIMEOUT_MS) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const response = await fetch(url, { ...this.#fetchInit(), ...init, signal: controller.signal });
      const body = await response.arrayBuffer();
      return { status: response.status, headers: response.headers, json: parseJson(body) };
    } finally {
      clearTimeout(timer);
    }
  }

  #fetchInit() {
    return { credentials: this.#config.withCredentials ? "include" : "same-origin", cache: "no-store" };
  }

  // -------------------------------------------------------------- channel

  // POST {prefix}/channels; null when the bridge offers none (an older
  // proxy) or cannot be reached after a few tries.
  #openChannel() {
    if (this.#channelPromise) return this.#channelPromise;
    this.#channelPromise = (async () => {
      for (let failures = 0; ; failures++) {
        let response = null;
        try {
          response = await this.#request(this.#config.origin + this.#config.prefix + "/channels", { method: "POST" });
        } catch {
          // unreachable: retried below
        }
        const info = response && response.json;
        if (response && response.status === 201 && info && typeof info.channel === "string" && info.links) {
          const links = {};
          for (const [key, link] of Object.entries(info.links)) {
            if (typeof link === "string") links[key] = new URL(link, this.#config.origin + "/").href;
          }
          const heartbeatMs = Number(info.heartbeat_ms) > 0 ? Number(info.heartbeat_ms) : DEFAULT_HEARTBEAT_MS;
          this.#channel = { id: info.channel, heartbeatMs, links };
          this.#broadcast({ t: "channel", channel: info.channel });
          return this.#channel;
        }
        if (response && response.status < 500 && response.status !== 429) return null;
        if (failures >= OPEN_BUSY_RETRIES) return null;
        await sleep(retryDelayMs(response, failures));
      }
    })().finally(() => {
      this.#channelPromise = null;
    });
    return this.#channelPromise;
  }

  // A session of a tab joins (or, after a takeover, rejoins) the channel at
  // the tab's cursor. The tab hears `joined` once the session is attached
  // and the reader works, or `unjoined` (it then reads on its own).
  async #join(tab, m) {
    const cursor = Number(m.cursor) || 0;
    const old = this.#sessions.get(m.session);
    const s = {
      id: m.session,
      tab,
      key: m.key,
      acked: cursor,
      received: cursor,
      backlog: 0,
      backlogBytes: 0,
      paused: false,
      attached: false, // the proxy answered the attach: the reader may list it
      closed: false,
      queue: [],
      queuedSeq: old ? old.queuedSeq : 0,
      retryAt: 0,
      order: Array.from(m.order || WSBRIDGE_BRIDGED), // the socket's transports: the reader never moves off them
      close: sameOriginUrl(m.close, this.#config.origin), // its DELETE, should its tab go without one
    };
    this.#sessions.set(s.id, s);
    this.#queueFrames(s, m.frames || []);
    const unjoined = (reason) => {
      if (this.#sessions.get(s.id) === s) this.#sessions.delete(s.id);
      this.#post(tab, { t: "unjoined", key: m.key, reason, attempts: this.#attempts.slice() });
    };
    if (!this.#channel && !(await this.#openChannel())) {
      unjoined("the bridge offers no channel");
      return;
    }
    if (!this.#transport) await this.#choose(Array.from(m.order || WSBRIDGE_BRIDGED));
    if (!this.#transport) {
      unjoined("no transport could read the channel");
      return;
    }
    if (!m.links || !m.links[this.#transport] || !(m.order || []).includes(this.#transport)) {
      unjoined(`the shared channel reads over ${this.#transport}, which this socket does not use`);
      return;
    }
    const result = await this.#attach(s);
    if (this.#sessions.get(s.id) !== s) return;
    if (result === "gone") {
      this.#sessions.delete(s.id);
      this.#post(tab, { t: "gone", key: m.key, reason: "wsbridge: the session no longer exists" });
      return;
    }
    if (result !== "ok") {
      unjoined("the session could not be attached to the channel");
      return;
    }
    this.#post(tab, { t: "joined", key: m.key, channel: this.#channel.id, transport: this.#transport, attempts: this.#attempts.slice(), reconnecting: this.#reconnecting });
    this.#pump();
    this.#endOldChannel(m.channel);
  }

  // A takeover leaves the dead hub's channel behind, with no reader; end it
  // (once) rather than leave it to the proxy's idle timeout. Its sessions
  // have moved here, or are detached by the DELETE and attached here next.
  #endOldChannel(id) {
    if (typeof id !== "string" || !id || id === this.#channel.id || this.#endedChannels.has(id)) return;
    this.#endedChannels.add(id);
    const url = this.#config.origin + this.#config.prefix + "/channels/" + encodeURIComponent(id);
    this.#request(url, { method: "DELETE" }).catch(() => null);
  }

  // POST attach at the session's acknowledged cursor: "ok", "gone" (unknown
  // or closed session) or "failed"; an unknown channel is replaced first.
  async #attach(s) {
    for (let failures = 0; failures < 4; failures++) {
      const channel = this.#channel || (await this.#renew());
      if (!channel) return "failed";
      let response = null;
      try {
        response = await this.#request(channel.links.attach, this.#json({ session: s.id, cursor: s.acked }));
      } catch {
        // retried
      }
      if (response && response.status === 204) {
        s.attached = true;
        // Its frames waited for this: a frame of a session not on the
        // channel is 404 there.
        queueMicrotask(() => this.#pump());
        return "ok";
      }
      const code = response && response.json && response.json.error;
      if (response && code === "unknown_channel") {
        if (this.#channel === channel) await this.#renew();
        continue;
      }
      if (response && (response.status === 404 || response.status === 410)) return "gone";
      if (response && response.status === 400) return "failed";
      await sleep(retryDelayMs(response, failures));
    }
    return "failed";
  }

  // The channel is gone (proxy restarted, channel expired): a new one, with
  // every session attached again at its cursor, then the reader restarts.
  #renew() {
    if (this.#renewing) return this.#renewing;
    this.#renewing = (async () => {
      this.#channel = null;
      this.#stop();
      const channel = await this.#openChannel();
      if (!channel) return null;
      const sessions = Array.from(this.#sessions.values());
      this.#renewing = null;
      for (const s of sessions) {
        s.received = s.acked;
        s.backlog = 0;
        s.backlogBytes = 0;
        s.paused = false;
        s.attached = false;
        const result = await this.#attach(s);
        if (result === "gone" && this.#sessions.get(s.id) === s) {
          this.#sessions.delete(s.id);
          this.#post(s.tab, { t: "gone", key: s.key, reason: "wsbridge: the session no longer exists" });
        }
      }
      if (this.#transport) this.#read();
      return channel;
    })().finally(() => {
      this.#renewing = null;
    });
    return this.#renewing;
  }

  // ---------------------------------------------------------------- reader

  // Tries the transports in order, as a socket does: SSE and stream must
  // deliver their first event within the probe window, poll answer within
  // openTimeout; else the next.
  #choose(order) {
    if (this.#choosing) return this.#choosing;
    this.#choosing = (async () => {
      let streamsHeld = false;
      this.#attempts = [];
      for (const name of order) {
        if (!WSBRIDGE_BRIDGED.includes(name)) continue;
        const started = Date.now();
        const attempt = (result) => this.#attempts.push({ transport: name, result, ms: Date.now() - started });
        if (!this.#channel && !(await this.#openChannel())) return;
        if (!this.#channel.links[name]) {
          attempt("not offered");
          continue;
        }
        if (streamsHeld && name !== "poll") {
          attempt("skipped");
          continue;
        }
        this.#transport = name;
        const result = await this.#firstConnection(name);
        attempt(result);
        if (result === "open") {
          this.#scheduleReprobe();
          return;
        }
        if (result.startsWith("held")) streamsHeld = true;
        this.#transport = null;
      }
    })().finally(() => {
      this.#choosing = null;
    });
    return this.#choosing;
  }

  #firstConnection(name) {
    return new Promise((resolve) => {
      this.#sawHeaders = false;
      const limit = name === "poll" ? this.#config.openTimeout : this.#config.probeTimeout;
      const timer = setTimeout(() => {
        this.#proofWaiter = null;
        this.#stop();
        resolve(name === "poll" ? "timeout" : this.#sawHeaders ? "held" : "held, no headers");
      }, limit);
      this.#proofWaiter = (ok) => {
        clearTimeout(timer);
        this.#proofWaiter = null;
        resolve(ok ? "open" : "failed");
      };
      this.#read();
    });
  }

  #stop() {
    this.#generation++;
    clearTimeout(this.#watchdog);
    clearTimeout(this.#reconnectTimer);
    this.#watchdog = null;
    this.#reconnectTimer = null;
    const stop = this.#stopReader;
    this.#stopReader = null;
    if (stop) stop();
  }

  // Opens a reader connection from every session's cursor.
  #read() {
    this.#stop();
    if (!this.#channel) return;
    const generation = this.#generation;
    this.#armWatchdog();
    if (this.#transport === "sse") this.#readSse(generation);
    else if (this.#transport === "stream") this.#readStream(generation);
    else this.#readPoll(generation);
  }

  // The cursors a reader resumes from: what the tabs acknowledged (never
  // more, so a takeover finds the rest still in the proxy's replay queue).
  #cursors(useReceived) {
    const list = [];
    for (const s of this.#sessions.values()) {
      if (s.attached && !s.paused && !s.closed) list.push(`${s.id}:${useReceived ? s.received : s.acked}`);
    }
    return list.join(",");
  }

  #armWatchdog() {
    clearTimeout(this.#watchdog);
    if (this.#transport === "poll" || !this.#channel) return;
    const generation = this.#generation;
    const ms = Math.max(MIN_WATCHDOG_MS, HEARTBEAT_TOLERANCE * this.#channel.heartbeatMs);
    this.#watchdog = setTimeout(() => this.#dropped(generation, null), ms);
  }

  #connected(generation) {
    if (generation !== this.#generation) return;
    this.#sawHeaders = true;
    this.#armWatchdog();
  }

  #proven(generation) {
    if (generation !== this.#generation) return;
    this.#failures = 0;
    this.#downSince = 0;
    this.#armWatchdog();
    if (this.#proofWaiter) {
      this.#proofWaiter(true);
      return;
    }
    if (this.#reconnecting) {
      this.#reconnecting = false;
      this.#broadcast({ t: "state", state: "resumed", transport: this.#transport, reason: `the shared ${this.#transport} connection is back` });
    }
  }

  // The reader connection ended or failed; `status` is its HTTP answer
  // when one came, `code` its error.
  #dropped(generation, status, code) {
    if (generation !== this.#generation) return;
    this.#stop();
    if (this.#proofWaiter) {
      this.#proofWaiter(false);
      return;
    }
    if (code === "unknown_channel") {
      this.#renew();
      return;
    }
    if (!this.#reconnecting) {
      this.#reconnecting = true;
      this.#broadcast({ t: "state", state: "reconnecting", transport: this.#transport, reason: `the shared ${this.#transport} connection dropped` });
    }
    const now = Date.now();
    if (!this.#downSince) this.#downSince = now;
    if (now - this.#downSince > this.#config.reconnectTimeout || (status >= 400 && status < 500 && status !== 404 && status !== 408 && status !== 429)) {
      for (const s of Array.from(this.#sessions.values())) {
        this.#sessions.delete(s.id);
        this.#post(s.tab, { t: "gone", key: s.key, reason: "wsbridge: the bridge could not be reached again", fail: true });
      }
      this.#reconnecting = false;
      this.#downSince = 0;
      return;
    }
    const delay = backoffMs(this.#failures++);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      if (this.#sessions.size || this.#proofWaiter) this.#read();
      else this.#reconnecting = false;
    }, delay);
  }

  // Another reader took the channel over (by the protocol we must not
  // fight it): its sessions end here, as a superseded session does.
  #superseded(generation) {
    if (generation !== this.#generation) return;
    this.#stop();
    if (this.#proofWaiter) {
      this.#proofWaiter(false);
      return;
    }
    for (const s of Array.from(this.#sessions.values())) {
      this.#sessions.delete(s.id);
      this.#post(s.tab, { t: "gone", key: s.key, reason: "wsbridge: another reader took over this session" });
    }
    this.#channel = null;
  }

  // Items of one reader chunk: events go to their tabs, one message per
  // session per chunk.
  #items(generation, items) {
    if (generation !== this.#generation) return false;
    this.#proven(generation);
    const out = new Map();
    for (const item of items) {
      const s = this.#sessions.get(item.session);
      if (!s) continue;
      if (item.type === "detached") {
        // Ours (backpressure, or a session that left) is expected; any
        // other means the session was taken elsewhere.
        if (s.expectDetached) s.expectDetached--;
        else if (s.attached && !s.paused && !s.closed) {
          this.#sessions.delete(s.id);
          this.#post(s.tab, { t: "gone", key: s.key, reason: "wsbridge: another reader took over this session" });
        }
        continue;
      }
      const id = Number(item.id);
      if (!(id > s.received)) continue;
      s.received = id;
      s.backlog++;
      s.backlogBytes += (typeof item.data === "string" ? item.data.length : 0) + 64;
      const { session: _, ...event } = item;
      let list = out.get(s);
      if (!list) out.set(s, (list = []));
      list.push(event);
      if (event.type === "close") s.closed = true;
    }
    for (const [s, events] of out) {
      this.#post(s.tab, { t: "events", key: s.key, session: s.id, events });
      if (s.closed) this.#sessions.delete(s.id);
      else if (!s.paused && (s.backlog > HUB_BACKLOG_EVENTS || s.backlogBytes > HUB_BACKLOG_BYTES)) this.#pause(s);
    }
    return generation === this.#generation;
  }

  // Backpressure for one session: off the channel until its tab catches up.
  #pause(s) {
    s.paused = true;
    s.attached = false;
    // The reader will tell us `detached`: ours, not a move elsewhere.
    s.expectDetached = (s.expectDetached || 0) + 1;
    s.detaching = this.#request(this.#channel.links.detach, this.#json({ session: s.id })).catch(() => null);
  }

  #ack(s, cursor) {
    if (!(cursor > s.acked) || cursor > s.received) return;
    // Events still counted: what the tab has not acknowledged yet.
    const share = s.received > s.acked ? (cursor - s.acked) / (s.received - s.acked) : 1;
    s.backlogBytes = Math.max(0, Math.round(s.backlogBytes * (1 - share)));
    s.acked = cursor;
    s.backlog = s.received - s.acked;
    if (s.paused && s.acked === s.received && !s.resuming) {
      // After the detach has landed, so the proxy sees them in this order.
      s.resuming = true;
      Promise.resolve(s.detaching)
        .then(() => this.#attach(s))
        .then((result) => {
          s.resuming = false;
          s.paused = false;
          if (result === "gone" && this.#sessions.get(s.id) === s) {
            this.#sessions.delete(s.id);
            this.#post(s.tab, { t: "gone", key: s.key, reason: "wsbridge: the session no longer exists" });
          }
        });
    }
    const waiters = this.#ackWaiters;
    this.#ackWaiters = [];
    for (const wake of waiters) wake();
  }

  #readSse(generation) {
    const url = withQuery(this.#channel.links.sse, { cursors: this.#cursors(false), heartbeat: "event" });
    const source = new EventSource(url, { withCredentials: this.#config.withCredentials });
    this.#stopReader = () => source.close();
    let opened = false;
    source.onopen = () => {
      opened = true;
      this.#connected(generation);
    };
    source.onmessage = (e) => {
      if (generation !== this.#generation) return;
      let item;
      try {
        item = JSON.parse(e.data);
      } catch {
        this.#dropped(generation, null);
        return;
      }
      this.#items(generation, [item]);
    };
    source.addEventListener("heartbeat", () => this.#proven(generation));
    source.addEventListener("superseded", () => this.#superseded(generation));
    source.onerror = async () => {
      if (generation !== this.#generation) return;
      source.close();
      if (opened) {
        this.#dropped(generation, null);
        return;
      }
      // EventSource hides why; ask once with fetch (aborted at its headers).
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
      let status = 0;
      let code = null;
      try {
        const response = await fetch(url, { ...this.#fetchInit(), signal: controller.signal });
        status = response.status;
        if (!response.ok) code = (parseJson(await response.arrayBuffer()) || {}).error;
      } catch {
        // network failure
      }
      clearTimeout(timer);
      controller.abort();
      this.#dropped(generation, status, code);
    };
  }

  #readStream(generation) {
    const controller = new AbortController();
    this.#stopReader = () => controller.abort();
    const url = withQuery(this.#channel.links.stream, { cursors: this.#cursors(false) });
    (async () => {
      let response;
      try {
        response = await fetch(url, { ...this.#fetchInit(), headers: { Accept: "application/x-ndjson" }, signal: controller.signal });
      } catch {
        this.#dropped(generation, null);
        return;
      }
      if (!response.ok || !response.body) {
        let code = null;
        try {
          code = (parseJson(await response.arrayBuffer()) || {}).error;
        } catch {
          // no body
        }
        this.#dropped(generation, response.status, code);
        return;
      }
      this.#connected(generation);
      const reader = response.body.getReader();
      const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
      const lines = new NdjsonLines();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done || generation !== this.#generation) break;
          const items = [];
          for (const object of lines.push(decoder.decode(value, { stream: true }))) {
            if (object.type === "superseded") {
              if (items.length) this.#items(generation, items);
              this.#superseded(generation);
              return;
            }
            if (object.type === "heartbeat" || object.type === "prelude") this.#proven(generation);
            else items.push(object);
          }
          if (items.length && !this.#items(generation, items)) return;
        }
      } catch {
        // dropped connection or a torn line: resume from the cursors
      }
      controller.abort();
      this.#dropped(generation, null);
    })();
  }

  #readPoll(generation) {
    const controller = new AbortController();
    this.#stopReader = () => controller.abort();
    (async () => {
      let wait = 0;
      while (generation === this.#generation) {
        if (wait) await this.#waitAcks(POLL_ACK_WAIT_MS);
        if (generation !== this.#generation) return;
        const url = withQuery(this.#channel.links.poll, { cursors: this.#cursors(true), wait });
        const timer = setTimeout(() => controller.abort(), wait * 1000 + POLL_SLACK_MS);
        let response;
        let body = null;
        try {
          response = await fetch(url, { ...this.#fetchInit(), signal: controller.signal });
          body = parseJson(await response.arrayBuffer());
        } catch {
          clearTimeout(timer);
          this.#dropped(generation, null);
          return;
        }
        clearTimeout(timer);
        if (!response.ok || !body) {
          this.#dropped(generation, response.status, body && body.error);
          return;
        }
        this.#connected(generation);
        if (!this.#items(generation, body.events || [])) return;
        if (body.superseded) {
          // A poll says `superseded` for an ended channel too: ask which,
          // harmlessly (a detach of no session: unknown_channel or
          // unknown_session).
          let code = null;
          try {
            const probe = await this.#request(this.#channel.links.detach, this.#json({ session: "A".repeat(22) }));
            code = probe.json && probe.json.error;
          } catch {
            // unreachable: taken as superseded
          }
          if (generation !== this.#generation) return;
          if (code === "unknown_channel") this.#dropped(generation, 404, code);
          else this.#superseded(generation);
          return;
        }
        wait = POLL_WAIT_S;
      }
    })();
  }

  // Resolves when every session's tab has acknowledged what it was given,
  // or after `ms`.
  #waitAcks(ms) {
    const lagging = () => Array.from(this.#sessions.values()).some((s) => !s.paused && s.acked < s.received);
    if (!lagging()) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      const check = () => {
        if (!lagging()) {
          clearTimeout(timer);
          resolve();
        } else this.#ackWaiters.push(check);
      };
      this.#ackWaiters.push(check);
    });
  }

  // While on poll, now and then: would SSE or stream deliver now? If so,
  // the tabs remember it for the next load, and the live reader moves over
  // (from the cursors, so nothing is lost or doubled).
  #scheduleReprobe() {
    clearTimeout(this.#reprobeTimer);
    const every = this.#config.reprobeInterval;
    if (this.#transport !== "poll" || !(every > 0)) return;
    this.#reprobeTimer = setTimeout(async () => {
      if (this.#transport !== "poll" || !this.#channel) return;
      // Only where every socket on the channel may go.
      const sessions = Array.from(this.#sessions.values());
      const order = WSBRIDGE_BRIDGED.filter((t) => t !== "poll" && this.#channel.links[t] && sessions.every((s) => s.order.includes(t)));
      const found = order.length ? await probeStreamingTransport(this.#config.origin, this.#config.prefix, this.#config.withCredentials, this.#config.probeTimeout, order) : null;
      if (found && this.#transport === "poll" && this.#channel) {
        this.#broadcast({ t: "memory", transport: found });
        this.#transport = found;
        this.#attempts.push({ transport: found, result: "open", ms: 0 });
        this.#broadcast({ t: "transport", transport: found, previous: "poll", reason: `${found} delivers (a background check while on poll); the shared reader moved over, every socket resuming from its last event` });
        this.#read();
        return;
      }
      this.#scheduleReprobe();
    }, every);
  }

  // ------------------------------------------------------------------ send

  #queueFrames(s, frames) {
    for (const f of frames || []) {
      if (!(f.seq > s.queuedSeq)) continue;
      s.queuedSeq = f.seq;
      s.queue.push(f);
    }
  }

  // One batch POST in flight at a time, frames of every session in turns.
  async #pump() {
    if (this.#sending || !this.#channel || !this.#transport) return;
    this.#sending = true;
    try {
      for (let failures = 0; ; ) {
        const now = Date.now();
        const batch = [];
        let bytes = 0;
        let wakeAt = Infinity;
        // Round-robin: one frame per session per pass.
        const ready = Array.from(this.#sessions.values()).filter((s) => s.queue.length && s.attached && !s.closed);
        if (!ready.length) break;
        const cursors = new Map(ready.map((s) => [s, 0]));
        for (let more = true; more && batch.length < this.#batchFrames; ) {
          more = false;
          for (const s of ready) {
            if (s.retryAt > now) {
              wakeAt = Math.min(wakeAt, s.retryAt);
              continue;
            }
            const i = cursors.get(s);
            const f = s.queue[i];
            if (!f) continue;
            const size = f.data.length + 64;
            if (batch.length >= this.#batchFrames || (batch.length && bytes + size > this.#batchBytes)) break;
            batch.push({ s, f });
            bytes += size;
            cursors.set(s, i + 1);
            more = true;
          }
        }
        if (!batch.length) {
          if (wakeAt < Infinity) {
            clearTimeout(this.#sendTimer);
            this.#sendTimer = setTimeout(() => this.#pump(), wakeAt - now);
          }
          break;
        }
        const channel = this.#channel;
        const body = batch.map(({ s, f }) => JSON.stringify({ session: s.id, seq: f.seq, type: f.type, data: f.data })).join("\n") + "\n";
        let response = null;
        try {
          response = await this.#request(channel.links.send, { method: "POST", headers: { "Content-Type": "application/x-ndjson" }, body });
        } catch {
          // lost or hung: the same seqs again are harmless
        }
        const results = response && response.status === 200 && response.json && Array.isArray(response.json.results) ? response.json.results : null;
        if (!results) {
          const code = response && response.json && response.json.error;
          if (code === "unknown_channel") {
            if (this.#channel === channel) await this.#renew();
            if (!this.#channel) break;
            continue;
          }
          if (response && response.status === 413) {
            this.#batchFrames = Math.max(1, this.#batchFrames >> 1);
            this.#batchBytes = Math.max(1, this.#batchBytes >> 1);
            continue;
          }
          await sleep(retryDelayMs(response, failures++));
          continue;
        }
        failures = 0;
        this.#results(batch, results);
      }
    } finally {
      this.#sending = false;
    }
  }

  // Per-frame answers: 204 and 200 (duplicate) acknowledge; 409 skipped
  // (an earlier frame of its session failed) and 429 stay queued; the rest
  // stop that session's sends, as they stop a socket's own.
  #results(batch, results) {
    const acked = new Map();
    const failed = new Set();
    batch.forEach(({ s, f }, i) => {
      const r = results[i] || {};
      const status = Number(r.status);
      if (failed.has(s)) return;
      if (status === 204 || status === 200) {
        s.queue.splice(s.queue.indexOf(f), 1);
        acked.set(s, f.seq);
        return;
      }
      failed.add(s);
      if (status === 409 && r.error === "skipped") return;
      if (status === 429 || status === 408 || status >= 500 || !status) {
        s.retryAt = Date.now() + Math.min(RETRY_AFTER_CAP_MS, Number(r.retry_after_ms) > 0 ? Number(r.retry_after_ms) : backoffMs(1));
        return;
      }
      s.queue = [];
      this.#post(s.tab, { t: "sendfail", key: s.key, seq: f.seq, status, error: r.error || null });
      if (status === 404) this.#forget(s, false);
    });
    for (const [s, seq] of acked) this.#post(s.tab, { t: "sent", key: s.key, seq });
  }
}

// The hub of a SharedWorker: the classic client.js, started as a
// SharedWorker by the page's sockets, becomes it. One hub per bridge origin
// and prefix (the worker's name carries them and the version).
function startWorkerHub() {
  const hubs = new Map();
  globalThis.onconnect = (e) => {
    const port = e.ports[0];
    let tab = null;
    let hub = null;
    port.onmessage = (message) => {
      const m = message.data;
      if (!m || typeof m !== "object") return;
      if (m.t === "hello" && !hub && m.config) {
        const key = m.config.origin + m.config.prefix;
        hub = hubs.get(key);
        if (!hub) hubs.set(key, (hub = new ChannelHub(m.config, "worker")));
        tab = String(m.tab);
        hub.connect(tab, (out) => port.postMessage(out));
        // The tab holds this lock for its life: granted to us, it is gone
        // (a closed or crashed tab sends no bye).
        const locks = globalThis.navigator && globalThis.navigator.locks;
        if (locks && m.lock) locks.request(m.lock, () => hub.disconnect(tab, true)).catch(() => null);
        return;
      }
      if (hub) hub.receive(tab, m);
    };
    port.start();
  };
}

// This tab's side of sharing, one per bridge origin and prefix: finds or
// becomes the hub, and carries each shared socket's messages to it. A new
// hub (a first answer, or a takeover) gets every socket again with its
// cursor and unacknowledged frames.
const hubClients = new Map();

class HubClient {
  #name;
  #config;
  #tab = randomId();
  #mode = null; // "worker", "tabs" or "tab" once a hub answered
  #hub = null; // id of the hub that answered last
  #toHub = null; // posts a message to the hub
  #local = null; // the ChannelHub running in this tab (leader or own)
  #sockets = new Map(); // key -> socket handle (see BridgeSocket#joinShared)
  #next = 0;

  static for(httpOrigin, options) {
    const key = httpOrigin + options.prefix;
    let client = hubClients.get(key);
    if (!client) hubClients.set(key, (client = new HubClient(httpOrigin, options)));
    return client;
  }

  constructor(httpOrigin, options) {
    this.#name = hubName(httpOrigin, options.prefix);
    this.#config = {
      origin: httpOrigin,
      prefix: options.prefix,
      withCredentials: options.withCredentials,
      probeTimeout: options.probeTimeout,
      openTimeout: options.openTimeout,
      reconnectTimeout: options.reconnectTimeout,
      reprobeInterval: options.reprobeInterval,
    };
    const locks = globalThis.navigator && globalThis.navigator.locks;
    this.#locks = locks && typeof locks.request === "function" ? locks : null;
    if (typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("pagehide", () => this.#post({ t: "bye" }));
    }
    const mode = options.shareMode;
    this.#shareMode = mode;
    const start = () => {
      if (mode !== "tabs" && typeof globalThis.SharedWorker === "function" && this.#startWorker(options.workerUrl || httpOrigin + options.prefix + "/client.js")) return;
      this.#fallback(mode);
    };
    if (!this.#locks) {
      start();
      return;
    }
    // Held for this tab's life: a hub elsewhere that is granted it knows the
    // tab is gone (a crashed tab sends no bye). Held before any hub hears of
    // this tab, or the hub could be granted it first.
    let started = false;
    const once = () => {
      if (started) return;
      started = true;
      start();
    };
    this.#locks
      .request(this.#tabLock(), () => {
        once();
        return new Promise(() => {});
      })
      .catch(once);
    setTimeout(once, WORKER_ANSWER_TIMEOUT_MS);
  }

  #locks;
  #shareMode;
  #bc = null; // leader-tab mode's BroadcastChannel
  // Leader-tab mode: every other tab's lifetime lock and the close URLs of
  // its sessions, as it announced them. A leader's hub closes the sessions
  // of a tab it learns is gone from that tab's lock; when the leader itself
  // goes, its hub goes with it, so the next leader closes the old leader's
  // sessions from here.
  #peers = new Map(); // tab id -> { lock, urls }
  #watchedPeers = new Set();

  #announceSessions() {
    if (!this.#bc) return;
    const urls = [];
    for (const handle of this.#sockets.values()) {
      const url = handle.goingAwayUrl();
      if (url) urls.push(url);
    }
    this.#bc.postMessage({ t: "tab-sessions", to: "*", tab: this.#tab, lock: this.#tabLock(), urls });
  }

  #peerSessions(m) {
    if (typeof m.tab !== "string" || typeof m.lock !== "string" || !Array.isArray(m.urls)) return;
    const urls = m.urls.map((url) => sameOriginUrl(url, this.#config.origin)).filter(Boolean).slice(0, PEER_SESSIONS_MAX);
    this.#peers.set(m.tab, { lock: m.lock, urls });
    if (this.#local) this.#watchPeer(m.tab);
  }

  // Granted once the tab is gone: its sessions are closed.
  #watchPeer(tab) {
    const peer = this.#peers.get(tab);
    if (!peer || this.#watchedPeers.has(tab) || !this.#locks) return;
    this.#watchedPeers.add(tab);
    this.#locks
      .request(peer.lock, () => {
        const gone = this.#peers.get(tab);
        this.#peers.delete(tab);
        this.#watchedPeers.delete(tab);
        if (gone) for (const url of gone.urls) closeQuietly(url, this.#config.withCredentials);
      })
      .catch(() => null);
  }

  #tabLock() {
    return `${this.#name}:tab:${this.#tab}`;
  }

  get mode() { return this.#mode; }

  newKey() {
    return `${this.#tab}:${++this.#next}`;
  }

  // No worker (or it failed): a leader tab, unless told "worker" only or
  // there are no Web Locks or BroadcastChannel; else this tab's own hub.
  #fallback(mode) {
    if (mode !== "worker" && this.#locks && typeof globalThis.BroadcastChannel === "function") this.#startTabs();
    else this.#startOwn();
  }

  #startWorker(url) {
    let worker;
    try {
      worker = new globalThis.SharedWorker(url, { name: this.#name });
    } catch {
      return false;
    }
    const port = worker.port;
    let settled = false;
    const fail = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        port.close();
      } catch {
        // closed
      }
      this.#toHub = null;
      this.#fallback(this.#shareMode);
    };
    const timer = setTimeout(fail, WORKER_ANSWER_TIMEOUT_MS);
    worker.addEventListener("error", fail);
    port.onmessage = (e) => {
      const m = e.data;
      if (!m || typeof m !== "object") return;
      if (!settled && m.t === "hub") {
        settled = true;
        clearTimeout(timer);
        this.#mode = "worker";
      }
      if (settled && this.#mode === "worker") this.#receive(m);
    };
    port.start();
    this.#toHub = (m) => port.postMessage(m);
    port.postMessage({ t: "hello", tab: this.#tab, config: this.#config, lock: this.#locks ? this.#tabLock() : null });
    return true;
  }

  #startOwn() {
    this.#mode = "tab";
    const hub = new ChannelHub(this.#config, "tab");
    this.#local = hub;
    this.#toHub = (m) => queueMicrotask(() => hub.receive(this.#tab, m));
    hub.connect(this.#tab, (m) => queueMicrotask(() => this.#receive(m)));
  }

  // Leader-tab mode: every tab waits for the leader lock; the holder runs
  // the hub for all, over a BroadcastChannel (messages to the hub are
  // `to: "hub"`, to a tab `to: <tab id>`, to all `to: "*"`).
  #startTabs() {
    this.#mode = "tabs";
    const bc = new BroadcastChannel(this.#name);
    this.#bc = bc;
    bc.postMessage({ t: "who", to: "*" });
    const watched = new Set();
    bc.onmessage = (e) => {
      const m = e.data;
      if (!m || typeof m !== "object") return;
      if (m.t === "tab-sessions" && m.to === "*") {
        if (m.tab !== this.#tab) this.#peerSessions(m);
        return;
      }
      // A tab that just started asks what the others hold.
      if (m.t === "who" && m.to === "*") {
        this.#announceSessions();
        return;
      }
      if (m.to === "hub") {
        const hub = this.#local;
        if (!hub) return;
        const from = String(m.from);
        if (!hub.has(from)) {
          hub.connect(from, (out) => bc.postMessage({ ...out, to: from }), false);
          if (m.lock && !watched.has(from) && this.#locks) {
            watched.add(from);
            this.#locks.request(String(m.lock), () => hub.disconnect(from, true)).catch(() => null);
          }
        }
        if (m.t === "hello") hub.hello(from);
        else hub.receive(from, m);
        return;
      }
      if (m.to === this.#tab || m.to === "*") this.#receive(m);
    };
    this.#toHub = (m) => {
      if (this.#local) {
        const hub = this.#local;
        queueMicrotask(() => hub.receive(this.#tab, m));
      } else bc.postMessage({ ...m, to: "hub", from: this.#tab, lock: this.#tabLock() });
    };
    this.#locks
      .request(`${this.#name}:leader`, () => {
        const hub = new ChannelHub(this.#config, "tabs");
        this.#local = hub;
        hub.connect(this.#tab, (m) => queueMicrotask(() => this.#receive(m)));
        for (const tab of this.#peers.keys()) this.#watchPeer(tab);
        // Every other tab: a new hub, report your sessions again.
        bc.postMessage({ t: "hub", hub: hub.id, mode: "tabs", to: "*" });
        return new Promise(() => {});
      })
      .catch(() => null);
    // A leader already there answers with `hub`.
    this.#post({ t: "hello" });
  }

  #post(m) {
    if (this.#toHub) this.#toHub(m);
  }

  #receive(m) {
    if (m.t === "hub") {
      if (m.hub === this.#hub) return;
      const takeover = this.#hub !== null;
      this.#hub = m.hub;
      for (const handle of this.#sockets.values()) this.#post(handle.joinMessage(takeover));
      this.#announceSessions();
      return;
    }
    if (m.key) {
      const handle = this.#sockets.get(m.key);
      if (handle) handle.receive(m);
      return;
    }
    for (const handle of this.#sockets.values()) handle.receive(m);
  }

  // A socket joins; its handle gets the hub's messages from now on.
  join(handle) {
    this.#sockets.set(handle.key, handle);
    if (this.#hub) this.#post(handle.joinMessage(false));
    this.#announceSessions();
  }

  leave(key) {
    if (!this.#sockets.delete(key)) return;
    this.#post({ t: "leave", key });
    this.#announceSessions();
  }

  post(m) {
    this.#post(m);
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

// Loaded as a SharedWorker's script (see HubClient): this global scope runs
// the hub of every tab that connects.
if (inSharedWorker()) startWorkerHub();
