// `npm run dev` serves the page with hot reload and sends the bridge's
// requests to a running wsbridge (WSBRIDGE_URL, default
// http://127.0.0.1:8080), which passes everything else to your backend.
// See clients/js/README.md ("The Vite dev server").
import { defineConfig } from "vite";

const wsbridge = process.env.WSBRIDGE_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  server: {
    proxy: {
      // Session open, SSE, stream, poll, send and close. SSE and NDJSON
      // answers stream through Vite's proxy as they are written.
      "/_bridge": { target: wsbridge },
      // The WebSocket path itself, for the client's first try (a real
      // WebSocket): `ws: true` forwards the upgrade.
      "/echo": { target: wsbridge, ws: true },
    },
  },
  build: { sourcemap: true },
});
