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
  /** Milliseconds a bridged transport's first connection may take. Default 5000. */
  openTimeout?: number;
  /** Milliseconds of failed reconnects after which the socket closes with 1006. Default 60000. */
  reconnectTimeout?: number;
  /** The constructor used for the "websocket" transport; null never uses one.
   *  Default: the browser's WebSocket as it was when the client loaded. */
  WebSocket?: typeof globalThis.WebSocket | null;
  /** A W3C `traceparent` sent on the open request, so the proxy carries the
   *  page's trace into the upstream handshake: a string, or a function called
   *  at each open. A value not of the traceparent form is not sent. */
  traceparent?: string | (() => string | null | undefined);
}

/** The `error` event fired when the bridge reports a gap: events `from`..`to`
 *  were dropped before this page could read them. Narrow an `error` event
 *  with `"from" in ev`. */
export interface BridgeGapErrorEvent extends ErrorEvent {
  readonly from: number;
  readonly to: number;
}

/** A socket with the browser WebSocket API that falls back to the wsbridge
 *  proxy's HTTP transports when a real WebSocket cannot be opened. Every
 *  member of `WebSocket` behaves as it does there; `transport` is added. */
export interface BridgeSocket extends WebSocket {
  /** The transport in use once open; null before. */
  readonly transport: BridgeTransport | null;
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
