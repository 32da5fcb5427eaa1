// Type checks only: the CommonJS entry (require) has the same declarations.
import bridge = require("@wsbridge/client");

const ws: WebSocket = new bridge.BridgeSocket("/ws");
const viaDefault: WebSocket = new bridge.default.BridgeSocket("/ws");
// @ts-expect-error a BridgeSocket is not a string
const notAString: string = new bridge.BridgeSocket("/ws");

export { ws, viaDefault, notAString };
