// Type declarations for the wsbridge browser client, served by the proxy as
// `{prefix}/client.mjs` (ES module) and `{prefix}/client.js` (classic script
// defining `globalThis.WsBridge`).

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
 *  were dropped before this page could read them. */
export interface BridgeGapErrorEvent extends ErrorEvent {
  readonly from: number;
  readonly to: number;
}

export interface BridgeSocketEventMap {
  open: Event;
  message: MessageEvent;
  error: Event | ErrorEvent | BridgeGapErrorEvent;
  close: CloseEvent;
}

/** A socket with the browser WebSocket API that falls back to the wsbridge
 *  proxy's HTTP transports when a real WebSocket cannot be opened. */
export declare class BridgeSocket extends EventTarget {
  constructor(url: string | URL, protocols?: string | string[], options?: BridgeSocketOptions);

  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSING: 2;
  static readonly CLOSED: 3;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;

  /** The absolute ws: or wss: URL. */
  readonly url: string;
  readonly readyState: 0 | 1 | 2 | 3;
  /** The negotiated subprotocol, "" when none. */
  readonly protocol: string;
  readonly extensions: string;
  /** Bytes given to send() and not yet acknowledged. */
  readonly bufferedAmount: number;
  binaryType: BinaryType;
  /** The transport in use once open; null before. */
  readonly transport: BridgeTransport | null;

  onopen: ((this: BridgeSocket, ev: Event) => any) | null;
  onmessage: ((this: BridgeSocket, ev: MessageEvent) => any) | null;
  onerror: ((this: BridgeSocket, ev: Event) => any) | null;
  onclose: ((this: BridgeSocket, ev: CloseEvent) => any) | null;

  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): void;
  /** code: 1000 or 3000-4999; reason: at most 123 UTF-8 bytes. */
  close(code?: number, reason?: string): void;

  addEventListener<K extends keyof BridgeSocketEventMap>(
    type: K,
    listener: (this: BridgeSocket, ev: BridgeSocketEventMap[K]) => any,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof BridgeSocketEventMap>(
    type: K,
    listener: (this: BridgeSocket, ev: BridgeSocketEventMap[K]) => any,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

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

/** The version of the proxy that served the client. */
export declare const version: string;

export interface WsBridgeNamespace {
  readonly BridgeSocket: typeof BridgeSocket;
  readonly installWebSocketShim: typeof installWebSocketShim;
  readonly version: string;
}

declare const WsBridge: WsBridgeNamespace;
export default WsBridge;

declare global {
  /** Defined by the classic script `{prefix}/client.js`. */
  var WsBridge: WsBridgeNamespace | undefined;
}
