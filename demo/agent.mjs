#!/usr/bin/env node
// A scripted agent of `make demo`, on the official MCP TypeScript SDK's client
// (@modelcontextprotocol/sdk). It runs in the agent container of a pod whose sidecar the
// operator injected, and reaches MCP servers only through it: AGENTMESH_PROXY_URL (set by the
// injection) + /servers/<name>/mcp, where <name> is an entry of the TrustPolicy's mcpServers.
//
//   node agent.mjs well-behaved | misbehaving | delegated
//
// Each step prints one line on stdout: what the agent did, then `->` and what came back (the
// result, or the refusal with its reason). The demo's driver shows these lines.
import { execFile } from "node:child_process";
import net from "node:net";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const role = process.argv[2];
const proxy = process.env.AGENTMESH_PROXY_URL || "http://localhost:8081";
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const say = (line) => console.log(line);

// One MCP session per call: connect (initialize) through the sidecar, call, close.
async function call(server, tool, args) {
  const what = `tools/call ${tool} on ${server}`;
  const client = new Client({ name: `demo-${role}`, version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(`${proxy}/servers/${server}/mcp`));
  try {
    await client.connect(transport);
    const result = await client.callTool({ name: tool, arguments: args });
    const text = (result.content || [])
      .filter((c) => c.type === "text")
      .map((c) => c.text)
      .join(" ")
      .slice(0, 80);
    say(`${what} -> ${result.isError ? "tool error" : "ok"}: ${text}`);
  } catch (error) {
    say(`${what} -> refused: ${reason(error).slice(0, 200)}`);
  } finally {
    await client.close().catch(() => {});
  }
}

// The JSON-RPC error's message: the SDK wraps it ("MCP error -32001: …", or an HTTP error
// with the JSON-RPC body after "Error POSTing to endpoint: ").
function reason(error) {
  const text = String(error.message || error);
  const body = text.indexOf("{");
  if (body >= 0) {
    try {
      const parsed = JSON.parse(text.slice(body));
      if (parsed.error && parsed.error.message) return parsed.error.message;
    } catch {
      // not JSON: the text as it is
    }
  }
  return text.replace(/^MCP error -?\d+: /, "");
}

// Runs an executable the policy denies; at safety tier 3 the kernel kills it at exec.
function runDenied(path, args = []) {
  const command = [path, ...args].join(" ");
  return new Promise((resolve) => {
    execFile(path, [...args, "--pool", "stratum+tcp://pool.invalid:3333"], (error) => {
      if (error && error.signal) say(`exec ${command} -> killed by ${error.signal}`);
      else if (error) say(`exec ${command} -> ran, exit ${error.code}`);
      else say(`exec ${command} -> ran`);
      resolve();
    });
  });
}

// Connects straight to the MCP server's Service, around the sidecar.
function connectDirect(host, port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, timeout: 5000 });
    const done = (line) => {
      socket.destroy();
      say(`connect ${host}:${port} around the sidecar -> ${line}`);
      resolve();
    };
    socket.on("connect", () => done("connected"));
    socket.on("timeout", () => done("timed out"));
    socket.on("error", (error) => done(`${error.code || error.message}`));
  });
}

const everything = "everything";
const summarizer = "summarizer";

async function wellBehaved() {
  for (let round = 0; ; round++) {
    if (round % 3 === 0) await call(everything, "echo", { message: `status report ${round}` });
    if (round % 3 === 1) await call(everything, "get-sum", { a: round, b: 2 });
    if (round % 3 === 2) await call(summarizer, "echo", { message: `summarise notes ${round}` });
    await sleep(4000);
  }
}

async function misbehaving() {
  // A good start.
  for (let round = 0; round < 2; round++) {
    await call(everything, "echo", { message: "fetching page" });
    await sleep(4000);
  }
  // A tool the policy denies, and an executable it denies.
  await call(everything, "get-env", {});
  await sleep(3000);
  await runDenied("/usr/local/bin/miner");
  // The same program through the dynamic loader, which no exec rule names: killed as well.
  await sleep(1000);
  await runDenied("/lib64/ld-linux-x86-64.so.2", ["/usr/local/bin/miner"]);
  // Then it keeps trying: through its sidecar, and around it.
  for (;;) {
    await sleep(6000);
    await call(everything, "echo", { message: "still here" });
    await connectDirect(`${everything}.${process.env.POD_NAMESPACE || "agentmesh-demo"}.svc`, 3001);
  }
}

async function delegated() {
  for (;;) {
    await call(summarizer, "echo", { message: "summarise with my delegated rights" });
    await sleep(10000);
  }
}

const roles = { "well-behaved": wellBehaved, misbehaving, delegated };
if (!roles[role]) {
  console.error(`usage: agent.mjs ${Object.keys(roles).join(" | ")}`);
  process.exit(2);
}
say(`agent ${role} started; MCP through ${proxy}`);
await roles[role]();
