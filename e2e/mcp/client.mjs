#!/usr/bin/env node
// MCP client fixture on the official TypeScript SDK (@modelcontextprotocol/sdk).
//
//   node e2e/mcp/client.mjs --url URL --transport streamable|sse [--header K=V ...] < steps.json
//
// stdin:  a JSON array of steps, e.g.
//   [{"op":"list_tools"},{"op":"call_tool","name":"echo","arguments":{"message":"hi"}},
//    {"op":"list_prompts"},{"op":"get_prompt","name":"greeting","arguments":{"name":"x"}},
//    {"op":"list_resources"},{"op":"read_resource","uri":"memo://notes"},{"op":"ping"}]
// stdout: one JSON object {"steps":[...]}, one entry per step, in order:
//   {"ok": <result>} or {"error": {"code": int|null, "message": str, "data": any}}.
//   For an McpError, code/data are the JSON-RPC error's; message is the JSON-RPC
//   message (the SDK prefixes "MCP error <code>: " to Error.message; that prefix is
//   removed). Any other exception has code null and data {"exception": <class name>}.
// stderr: "client.mjs: protocolVersion=<negotiated>" after connecting, and diagnostics;
//   with --trace one "client.mjs: http ..." line per HTTP request (method, URL, MCP
//   headers, status, content type).
// Exit: 0 when connected (step errors are in the output), 1 when connect failed
// (every step then carries the connect error), 2 on bad usage or input.
//
// --transport streamable = StreamableHTTPClientTransport; sse = SSEClientTransport
// (the deprecated HTTP+SSE transport). SDK 1.32.x speaks only the initialize
// handshake (protocol versions up to 2025-11-25); it cannot speak 2026-07-28.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { McpError } from "@modelcontextprotocol/sdk/types.js";

const usage =
  "usage: client.mjs --url URL --transport streamable|sse [--header K=V ...] [--mode legacy] [--trace] < steps.json";

function fail(msg) {
  console.error(`client.mjs: ${msg}`);
  console.error(usage);
  process.exit(2);
}

function parseArgs(argv) {
  const out = { headers: {}, mode: "legacy", trace: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--url") out.url = val();
    else if (a === "--transport") out.transport = val();
    else if (a === "--mode") out.mode = val();
    else if (a === "--trace") out.trace = true;
    else if (a === "--header") {
      const kv = val();
      const eq = kv.indexOf("=");
      if (eq <= 0) fail(`--header wants K=V, got ${kv}`);
      out.headers[kv.slice(0, eq)] = kv.slice(eq + 1);
    } else fail(`unknown argument ${a}`);
  }
  if (!out.url) fail("--url is required");
  if (!["streamable", "sse"].includes(out.transport)) fail("--transport must be streamable or sse");
  if (out.mode !== "legacy")
    fail("--mode: @modelcontextprotocol/sdk 1.x has only the initialize handshake (legacy)");
  return out;
}

async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return Buffer.concat(chunks).toString("utf8");
}

function errorEntry(err) {
  if (err instanceof McpError) {
    const prefix = `MCP error ${err.code}: `;
    const message = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
    return { error: { code: err.code, message, data: err.data ?? null } };
  }
  const message = err instanceof Error ? err.message : String(err);
  const name = err?.constructor?.name ?? typeof err;
  return { error: { code: null, message, data: { exception: name } } };
}

async function runStep(client, step) {
  switch (step?.op) {
    case "list_tools":
      return client.listTools();
    case "call_tool":
      return client.callTool({ name: step.name, arguments: step.arguments ?? {} });
    case "list_prompts":
      return client.listPrompts();
    case "get_prompt":
      return client.getPrompt({ name: step.name, arguments: step.arguments ?? {} });
    case "list_resources":
      return client.listResources();
    case "read_resource":
      return client.readResource({ uri: step.uri });
    case "ping":
      return client.ping();
    default:
      throw new Error(`unknown op ${JSON.stringify(step?.op)}`);
  }
}

const args = parseArgs(process.argv.slice(2));
let steps;
try {
  steps = JSON.parse(await readStdin());
} catch (e) {
  fail(`stdin is not JSON: ${e.message}`);
}
if (!Array.isArray(steps)) fail("stdin must be a JSON array of steps");

const url = new URL(args.url);
const traced = ["mcp-protocol-version", "mcp-method", "mcp-name", "mcp-session-id"];
async function tracingFetch(input, init) {
  const response = await fetch(input, init);
  const h = new Headers(init?.headers);
  const mcp = traced.filter((k) => h.has(k)).map((k) => `${k}=${h.get(k)}`);
  const ctype = (response.headers.get("content-type") ?? "-").split(";")[0];
  const line = [init?.method ?? "GET", String(input), ...mcp, "->", response.status, ctype];
  console.error(`client.mjs: http ${line.join(" ")}`);
  return response;
}
const opts = { requestInit: { headers: args.headers }, ...(args.trace ? { fetch: tracingFetch } : {}) };
const transport =
  args.transport === "streamable"
    ? new StreamableHTTPClientTransport(url, opts)
    : new SSEClientTransport(url, opts);
const client = new Client({ name: "agentmesh-e2e-client-ts", version: "0.0.0" });
let closing = false;
client.onerror = (e) => {
  if (!closing) console.error(`client.mjs: transport error: ${e?.message ?? e}`);
};

const results = [];
let exitCode = 0;
try {
  await client.connect(transport);
  console.error(`client.mjs: protocolVersion=${transport._protocolVersion ?? "unknown"}`);
} catch (e) {
  const entry = errorEntry(e);
  console.error(`client.mjs: connect failed: ${entry.error.message}`);
  for (let i = 0; i < steps.length; i++) results.push(entry);
  exitCode = 1;
}
if (exitCode === 0) {
  for (const step of steps) {
    try {
      results.push({ ok: (await runStep(client, step)) ?? null });
    } catch (e) {
      results.push(errorEntry(e));
    }
  }
  closing = true;
  try {
    if (args.transport === "streamable" && transport.sessionId) await transport.terminateSession();
  } catch (e) {
    console.error(`client.mjs: session termination failed: ${e?.message ?? e}`);
  }
  await client.close().catch(() => {});
}
process.stdout.write(JSON.stringify({ steps: results }) + "\n", () => process.exit(exitCode));
