// Type checks only (never run): BridgeSocket goes wherever a DOM WebSocket is
// expected. Resolved by package name, so the exports map is checked too.
import { Terminal } from "@xterm/xterm";
import { AttachAddon } from "@xterm/addon-attach";
import WsBridge, { BridgeSocket, installWebSocketShim, version, type BridgeGapErrorEvent } from "@wsbridge/client";

const ws: WebSocket = new BridgeSocket("ws://localhost/ws");
const relative: WebSocket = new BridgeSocket(new URL("/ws", "http://localhost"), ["chat.v1"], {
  transports: ["sse", "poll"],
  prefix: "/_bridge",
});

function wantsWebSocket(socket: WebSocket): number {
  return socket.readyState;
}
wantsWebSocket(new BridgeSocket("/ws"));
wantsWebSocket(new WsBridge.BridgeSocket("/ws"));

// xterm.js's AttachAddon takes a WebSocket.
const terminal = new Terminal();
terminal.loadAddon(new AttachAddon(new BridgeSocket("/pty"), { bidirectional: true }));

// The WebSocket API as typed by the DOM library, plus `transport`.
const socket = new BridgeSocket("/ws");
socket.binaryType = "arraybuffer";
socket.onopen = function () {
  const self: WebSocket = this;
  console.log(self.url, socket.transport satisfies "websocket" | "sse" | "stream" | "poll" | null);
};
socket.onmessage = (e: MessageEvent) => console.log(e.data);
socket.addEventListener("close", (e) => console.log(e.code, e.reason, e.wasClean));
socket.addEventListener("error", (e) => {
  if ("from" in e) console.log((e as BridgeGapErrorEvent).to);
});
socket.addEventListener("transport", (e) => console.log(e.detail.transport, e.detail.reason, e.detail.attempts.length));
socket.addEventListener("reconnecting", (e) => console.log(e.detail.reason, socket.state satisfies "reconnecting" | "open" | "connecting" | "closing" | "closed"));
socket.addEventListener("resumed", (e) => console.log(e.detail.transport));
new BridgeSocket("/ws", [], { probeTimeout: 1000, remember: false, rememberFor: 60000, reprobeInterval: 0 });
// Sharing: on by default; socket.shared says where the channel's hub runs.
new BridgeSocket("/ws", [], { share: false });
new BridgeSocket("/ws", [], { shareMode: "tabs", workerUrl: "/_bridge/client.js" });
const shared = socket.shared;
if (shared) console.log(shared.mode satisfies "worker" | "tabs" | "tab", shared.channel.length);
socket.send(new Uint8Array([1, 2]));
socket.send("text");
socket.close(1000, "bye");
const states: number[] = [BridgeSocket.CONNECTING, BridgeSocket.OPEN, socket.CLOSING, socket.CLOSED];

// The constructor can stand in for the WebSocket constructor, and the other way round.
const Ctor: typeof WebSocket = BridgeSocket;
new BridgeSocket("/ws", [], { WebSocket: null });
new BridgeSocket("/ws", undefined, { WebSocket: globalThis.WebSocket });
const restore: () => void = installWebSocketShim(/^wss?:\/\/localhost\//);
restore();
const v: string = version;
class Logged extends BridgeSocket {}
const logged: WebSocket = new Logged("/ws");

// The types are real, not `any`.
// @ts-expect-error a BridgeSocket is not a number
const notANumber: number = new BridgeSocket("/ws");
// @ts-expect-error transport is read-only
socket.transport = "poll";
// @ts-expect-error an unknown transport
new BridgeSocket("/ws", [], { transports: ["carrier-pigeon"] });

export { ws, relative, states, Ctor, v, logged, notANumber };
