// A page that talks to an echo backend through wsbridge. BridgeSocket comes
// from the npm package and is used as a plain WebSocket: nothing below
// knows that the proxy may be carrying it over SSE, NDJSON or long-poll.
import { BridgeSocket, version } from "@wsbridge/client";

const status = document.querySelector<HTMLSpanElement>("#status")!;
const form = document.querySelector<HTMLFormElement>("#form")!;
const input = document.querySelector<HTMLInputElement>("#message")!;
const log = document.querySelector<HTMLUListElement>("#log")!;

function show(text: string): void {
  const li = document.createElement("li");
  li.textContent = text;
  log.append(li);
}

// Typed as the DOM WebSocket: any code written for one takes it.
const socket: WebSocket = new BridgeSocket("/echo");
document.body.dataset.version = version;

socket.addEventListener("open", () => {
  const transport = (socket as BridgeSocket).transport ?? "unknown";
  status.textContent = `open over ${transport}`;
  document.body.dataset.transport = transport;
  document.body.dataset.state = "open";
});
socket.addEventListener("message", (e: MessageEvent<string>) => show(`echo: ${e.data}`));
socket.addEventListener("error", () => show("error"));
socket.addEventListener("close", (e: CloseEvent) => {
  status.textContent = `closed ${e.code}`;
  document.body.dataset.state = "closed";
});

form.addEventListener("submit", (e) => {
  e.preventDefault();
  if (input.value && socket.readyState === WebSocket.OPEN) {
    socket.send(input.value);
    input.value = "";
  }
});
