// xterm.js on a BridgeSocket: AttachAddon takes any WebSocket, and a
// BridgeSocket is one, falling back to SSE, NDJSON stream or long-poll when
// the upgrade is refused. The client comes from the proxy
// (/_bridge/client.mjs, mapped as "@wsbridge/client" in index.html); a
// bundled app would `npm install @wsbridge/client` instead.
import { Terminal } from "@xterm/xterm";
import { AttachAddon } from "@xterm/addon-attach";
import { BridgeSocket } from "@wsbridge/client";

const status = document.getElementById("status");
const term = new Terminal({ cols: 100, rows: 30, cursorBlink: true, convertEol: false });
term.open(document.getElementById("terminal"));

// The backend sizes the pty from the query; the shell's output is binary.
const socket = new BridgeSocket(`/pty?cols=${term.cols}&rows=${term.rows}`);
// AttachAddon throws on keystrokes before the socket is open: attach on open.
socket.addEventListener("open", () => {
  term.loadAddon(new AttachAddon(socket));
  status.textContent = `connected over ${socket.transport}`;
  term.focus();
});
socket.addEventListener("close", (e) => {
  status.textContent = `closed (${e.code}${e.reason ? ": " + e.reason : ""})`;
});

// For tests/browser/examples.mjs.
globalThis.wsbridgeTerminal = { term, socket };
