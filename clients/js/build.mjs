#!/usr/bin/env node
// Builds the npm package's dist/ from src/bridge.js, the one source the proxy
// also embeds (src/client/mod.rs). No bundler: the source declares top-level
// items only, so each form is the source between a head and a tail.
//
//     node build.mjs            # or: npm run build (npm pack runs it too)
//
// dist/client.mjs  ES module              byte-identical to {prefix}/client.mjs
// dist/client.js   classic script         byte-identical to {prefix}/client.js
//                  (defines globalThis.WsBridge)
// dist/client.cjs  CommonJS module
// dist/client.d.mts, dist/client.d.cts    the declarations (src/bridge.d.ts)
// dist/*.map       source maps back to src/bridge.js
//
// The heads and tails below must stay those of src/client/mod.rs:
// tests/client_files.rs compares dist/ with what the proxy serves.

import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const dist = join(here, "dist");

// The package and the proxy carry one version: WsBridge.version names it.
const pkg = JSON.parse(readFileSync(join(here, "package.json"), "utf8"));
const cargo = readFileSync(join(root, "Cargo.toml"), "utf8");
const crateVersion = /^\[package\][^[]*?^version\s*=\s*"([^"]+)"/ms.exec(cargo)?.[1];
if (pkg.version !== crateVersion) {
  console.error(`package.json version ${pkg.version} differs from Cargo.toml's ${crateVersion}; keep them equal`);
  process.exit(1);
}
const version = pkg.version;

const raw = readFileSync(join(here, "src", "bridge.js"), "utf8");
const source = raw.replaceAll("__WSBRIDGE_VERSION__", version);
const namespace = "Object.freeze({ BridgeSocket, installWebSocketShim, version: WSBRIDGE_VERSION })";

const forms = {
  "client.js": {
    head: `/*! wsbridge client ${version}: classic script, defines globalThis.WsBridge */\n(function () {\n"use strict";\n`,
    tail: `\nglobalThis.WsBridge = ${namespace};\n})();\n`,
  },
  "client.mjs": {
    head: `/*! wsbridge client ${version}: ES module */\n`,
    tail: `\nexport { BridgeSocket, installWebSocketShim, WSBRIDGE_VERSION as version };\nexport default ${namespace};\n`,
  },
  "client.cjs": {
    head: `/*! wsbridge client ${version}: CommonJS module */\n"use strict";\n`,
    tail:
      `\nObject.defineProperty(exports, "__esModule", { value: true });\n` +
      `exports.BridgeSocket = BridgeSocket;\n` +
      `exports.installWebSocketShim = installWebSocketShim;\n` +
      `exports.version = WSBRIDGE_VERSION;\n` +
      `exports.default = ${namespace};\n`,
  },
};

rmSync(dist, { recursive: true, force: true });
mkdirSync(dist);
for (const [name, { head, tail }] of Object.entries(forms)) {
  const body = head + source + tail + `//# sourceMappingURL=${name}.map\n`;
  writeFileSync(join(dist, name), body);
  writeFileSync(join(dist, `${name}.map`), JSON.stringify(sourceMap(name, lineCount(head), raw)) + "\n");
}
const types = readFileSync(join(here, "src", "bridge.d.ts"), "utf8");
writeFileSync(join(dist, "client.d.mts"), types);
writeFileSync(join(dist, "client.d.cts"), types);
// npm takes license files from the package directory; the repository's are the originals.
for (const license of ["LICENSE-MIT", "LICENSE-APACHE"]) copyFileSync(join(root, license), join(here, license));
console.log(`built dist/ for @wsbridge/client ${version}`);

function lineCount(text) {
  return text.split("\n").length - 1;
}

// Source map v3: the source's line i is the output's line offset + i, column
// for column (the version replacement only lengthens one string literal).
function sourceMap(file, offset, original) {
  const lines = lineCount(original) + 1;
  const mappings = ";".repeat(offset) + ["AAAA", ...Array(lines - 1).fill("AACA")].join(";");
  return { version: 3, file, sources: ["../src/bridge.js"], sourcesContent: [original], names: [], mappings };
}
