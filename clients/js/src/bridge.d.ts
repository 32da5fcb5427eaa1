// Type declarations for the wsbridge browser client: the npm package
// `@wsbridge/client` (ESM and CommonJS), and the same code as the proxy serves
// it, `{prefix}/client.mjs` (ES module) and `{prefix}/client.js` (classic
// script defining `globalThis.WsBridge`).
//
// `BridgeSocket` is declared as a `WebSocket` with one more property, so it
// goes wherever a DOM `WebSocket` is expected:
//
//     const ws: WebSocket = new BridgeSocket("/ws");
//     terminal.loadAddon(new AttachAddon(new BridgeSocket("/pty")));

/** A way the client can reach the upstream, in the order it tries them. */
export type BridgeTransport = "websocket" | "sse" | "stream" | "poll";

export interface BridgeSocketOptions {
  /** Path prefix of the bridge endpoints on the url's origin. Default "/_bridge". */
  prefix?: string;
  /** Transports to try, in order. Default ["websocket", "sse", "stream", "poll"]. */
  transports?: BridgeTransport[];
  /** Send cookies on cross-origin bridge requests (fetch credentials "include",
   *  EventSource withCredentials). Default false. */
  withCredentials?: boolean;
  /** Milliseconds a real WebSocket may take to open before falling back. Default 1500. */
  websocketTimeout?: number;
  /** Milliseconds a bridged transport's first connection may take (headers,
   *  or the first poll's answer). Default 5000. */
  openTimeout?: number;
  /** Milliseconds SSE and stream get to deliver their first event (the proxy
   *  sends a heartbeat at once) before the next transport is tried. Default 2000. */
  probeTimeout?: number;
  /** Remember in localStorage (key `wsbridge:transport:` + bridge origin +
   *  prefix) which transport worked, and start there next time. Default true. */
  remember?: boolean;
  /** Milliseconds a remembered transport is trusted; then every transport is
   *  probed again. Default 86400000 (24 h). */
  rememberFor?: number;
  /** While bridged, milliseconds between background checks that a real
   *  WebSocket would open (never switching the live socket); 0 never. Default 300000. */
  reprobeInterval?: number;
  /** Milliseconds of failed reconnects after which the socket closes with 1006. Default 60000. */
  reconnectTimeout?: number;
  /** The constructor used for the "websocket" transport; null never uses one.
   *  Default: the browser's WebSocket as it was when the client loaded. */
  WebSocket?: typeof globalThis.WebSocket | null;
  /** A W3C `traceparent` sent on the open request, so the proxy carries the
   *  page's trace into the upstream handshake: a string, or a function called
   *  at each open. A value not of the traceparent form is not sent. */
  traceparent?: string | (() => string | null | undefined);
  /** Put a bridged socket's session on the one multiplexed channel shared by
   *  every socket of every tab of this bridge (one reader, one send in
   *  flight); false gives it its own reader and sends. Default true. */
  share?: boolean;
  /** Where the shared channel's hub runs: "auto" a SharedWorker, else a
   *  leader tab (Web Locks + BroadcastChannel), else this tab; "worker" a
   *  SharedWorker, else this tab; "tabs" a leader tab, else this tab. Default "auto". */
  shareMode?: BridgeShareMode;
  /** The SharedWorker's script, same-origin with the page. Default the
   *  proxy's `{prefix}/client.js` on the bridge origin. */
  workerUrl?: string;
}

/** `shareMode`: where the shared channel's hub may run. */
export type BridgeShareMode = "auto" | "worker" | "tabs";

/** `socket.shared` while the socket's session is on a shared channel: where
 *  its hub runs ("tab": this tab's own, as nothing else exists) and the
 *  channel's id. */
export interface BridgeShared {
  readonly mode: "worker" | "tabs" | "tab";
  readonly channel: string;
}

/** The `error` event fired when the bridge reports a gap: events `from`..`to`
 *  were dropped before this page could read them. Narrow an `error` event
 *  with `"from" in ev`. */
export interface BridgeGapErrorEvent extends ErrorEvent {
  readonly from: number;
  readonly to: number;
}

/** `socket.state`: `readyState` in words, plus "reconnecting" while a bridged
 *  socket's downstream connection is being re-established (readyState stays OPEN). */
export type BridgeSocketState = "connecting" | "open" | "reconnecting" | "closing" | "closed";

/** What an attempt to open a transport came to. */
export interface BridgeTransportAttempt {
  readonly transport: BridgeTransport;
  readonly result: "open" | "failed" | "timeout" | "held" | "held, no headers" | "skipped" | "not offered" | "bridge unavailable";
  /** Milliseconds the attempt took. */
  readonly ms: number;
}

/** The `transport` event: fired just before `open`, and whenever the
 *  transport changes on an open socket. */
export interface BridgeTransportEvent extends CustomEvent<{
  readonly transport: BridgeTransport;
  readonly previous: BridgeTransport | null;
  /** Why, in words: what failed, and what works. */
  readonly reason: string;
  readonly attempts: readonly BridgeTransportAttempt[];
}> {}

/** The `reconnecting` and `resumed` events of a bridged socket. */
export interface BridgeStateEvent extends CustomEvent<{
  readonly transport: BridgeTransport;
  readonly reason: string;
}> {}

/** The events of a BridgeSocket: the WebSocket's, and `transport`,
 *  `reconnecting` (the downstream dropped; sends are kept) and `resumed` (it
 *  is back, nothing lost). */
export interface BridgeSocketEventMap extends WebSocketEventMap {
  transport: BridgeTransportEvent;
  reconnecting: BridgeStateEvent;
  resumed: BridgeStateEvent;
}

/** A socket with the browser WebSocket API that falls back to the wsbridge
 *  proxy's HTTP transports when a real WebSocket cannot be opened. Every
 *  member of `WebSocket` behaves as it does there; `transport` is added. */
export interface BridgeSocket extends WebSocket {
  /** The transport in use once open; null before. */
  readonly transport: BridgeTransport | null;
  readonly state: BridgeSocketState;
  /** null when the socket is not on a shared channel (a real WebSocket,
   *  `share: false`, a socket reading on its own, a closed socket). */
  readonly shared: BridgeShared | null;
  addEventListener<K extends keyof BridgeSocketEventMap>(
    type: K,
    listener: (this: BridgeSocket, ev: BridgeSocketEventMap[K]) => any,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof BridgeSocketEventMap>(
    type: K,
    listener: (this: BridgeSocket, ev: BridgeSocketEventMap[K]) => any,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: boolean | EventListenerOptions): void;
}

export interface BridgeSocketConstructor {
  /** `url`: ws:, wss:, http:, https: or relative to the document, as for
   *  `new WebSocket()`. */
  new (url: string | URL, protocols?: string | string[], options?: BridgeSocketOptions): BridgeSocket;
  readonly prototype: BridgeSocket;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;
}

export declare const BridgeSocket: BridgeSocketConstructor;

/** Which absolute ws:/wss: URLs the shim bridges: a URL prefix, a RegExp, or a
 *  predicate. Default: URLs on the page's own host. */
export type WebSocketShimMatch = string | RegExp | ((url: string) => boolean);

/** Replaces `globalThis.WebSocket` so that matching URLs get a BridgeSocket
 *  (which still tries a real WebSocket first) and others the native
 *  WebSocket. Returns a function that restores the previous constructor. */
export declare function installWebSocketShim(
  match?: WebSocketShimMatch,
  options?: BridgeSocketOptions,
): () => void;

/** The client's version (the proxy's, for the files it serves). */
export declare const version: string;

export interface WsBridgeNamespace {
  readonly BridgeSocket: BridgeSocketConstructor;
  readonly installWebSocketShim: typeof installWebSocketShim;
  readonly version: string;
}

declare const WsBridge: WsBridgeNamespace;
export default WsBridge;

declare global {
  /** Defined by the classic script (`{prefix}/client.js`, `@wsbridge/client/classic`). */
  var WsBridge: WsBridgeNamespace | undefined;
}
