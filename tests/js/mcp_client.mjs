#!/usr/bin/env node
// Drive a memex MCP server with the official TypeScript SDK (npm `@modelcontextprotocol/sdk`,
// installed by scripts/jsclients.sh into target/jsclients) and print what it saw, as
// tests/py/mcp_client.py does:
//
//   {"server": {"name", "version"}, "tools": [...], "results": [{"tool", "is_error", "text",
//    "structured"}]}   or   {"error": "..."} when the connection is refused.
//
// Transports: --stdio CMD [ARG ...]  |  --url URL [--bearer KEY].  Calls: --calls JSON.
// The SDK is found at $MEMEX_JS_CLIENTS (default: target/jsclients beside this repository).
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const base = process.env.MEMEX_JS_CLIENTS || path.join(here, "..", "..", "target", "jsclients");
const sdk = (p) => import(pathToFileURL(path.join(base, "node_modules", "@modelcontextprotocol", "sdk", "dist", "esm", p)).href);
const { Client } = await sdk("client/index.js");
const { StdioClientTransport } = await sdk("client/stdio.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");

const argv = process.argv.slice(2);
let url, bearer, calls = [], stdio;
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--url") url = argv[++i];
  else if (argv[i] === "--bearer") bearer = argv[++i];
  else if (argv[i] === "--calls") calls = JSON.parse(argv[++i]);
  else if (argv[i] === "--stdio") { stdio = argv.slice(i + 1); break; }
}

let transport;
if (stdio) {
  const env = { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith("MEMEX_") || k === "PATH" || k === "HOME")) };
  transport = new StdioClientTransport({ command: stdio[0], args: stdio.slice(1), env, stderr: "ignore" });
} else if (url) {
  const headers = bearer ? { Authorization: `Bearer ${bearer}` } : {};
  transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
} else {
  console.error("give --stdio CMD ... or --url URL");
  process.exit(2);
}

const client = new Client({ name: "memex-test", version: "0" });
let out;
try {
  await client.connect(transport);
  out = { server: client.getServerVersion(), tools: [], results: [] };
  out.tools = (await client.listTools()).tools;
  for (const call of calls) {
    try {
      const r = await client.callTool({ name: call.tool, arguments: call.args || {} });
      const text = (r.content || []).map((c) => c.text || "").join("");
      out.results.push({ tool: call.tool, is_error: !!r.isError, text, structured: r.structuredContent ?? null });
    } catch (e) {
      out.results.push({ tool: call.tool, client_error: String(e).slice(0, 2000) });
    }
  }
} catch (e) {
  out = { error: String(e).slice(0, 2000) };
} finally {
  try { await client.close(); } catch {}
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
