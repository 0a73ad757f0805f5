#!/usr/bin/env node
// Starts @modelcontextprotocol/server-everything's own HTTP transport on loopback.
//
//   node e2e/mcp/everything.mjs streamableHttp|sse --port PORT [--host 127.0.0.1]
//
// Its transports (dist/transports/{streamableHttp,sse}.js) run an express app at
// import time with `app.listen(process.env.PORT || 3001, cb)`: no host, so Node binds
// every interface, and there is no env var or flag for the host. This wrapper sets
// PORT, makes a net.Server.listen() that names a port but no host listen on --host
// (default 127.0.0.1), then imports the transport module unchanged.
//
// Endpoints: streamableHttp -> POST/GET/DELETE http://HOST:PORT/mcp
//            sse            -> GET http://HOST:PORT/sse, POST /message?sessionId=...
// Once listening it prints "everything: listening on <url>" on stderr.
//
// Its gzip-file-as-resource tool fetches the http(s) URL it is given (by default a
// GitHub URL). This wrapper sets GZIP_ALLOWED_DOMAINS=invalid unless already set, so
// only hosts under the reserved .invalid TLD pass its check and nothing is fetched;
// data: URIs still work. Call that tool with a data: URI only all the same.
// Its get-env tool returns the server's whole environment: start it without secrets.
import net from "node:net";

const usage = "usage: everything.mjs streamableHttp|sse --port PORT [--host HOST]";
const argv = process.argv.slice(2);
const mode = argv[0];
let port;
let host = "127.0.0.1";
for (let i = 1; i < argv.length; i++) {
  if (argv[i] === "--port") port = argv[++i];
  else if (argv[i] === "--host") host = argv[++i];
  else {
    console.error(usage);
    process.exit(2);
  }
}
if (!["streamableHttp", "sse"].includes(mode) || !/^\d+$/.test(port ?? "")) {
  console.error(usage);
  process.exit(2);
}
// In its own pod (the e2e image sets EVERYTHING_IN_POD=1) the network namespace is the pod's,
// and the server must listen on the pod's address for its Service.
const inPod = process.env.EVERYTHING_IN_POD === "1";
if (!inPod && !["127.0.0.1", "::1", "localhost"].includes(host) && !host.startsWith("127.")) {
  console.error(`everything.mjs: refusing non-loopback host ${host}`);
  process.exit(2);
}

const path = mode === "sse" ? "/sse" : "/mcp";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const [first, second] = args;
  if (first !== null && typeof first === "object") {
    if (first.port !== undefined && first.path === undefined && first.host === undefined) {
      args[0] = { ...first, host };
    }
  } else if (typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first))) {
    if (typeof second !== "string") args.splice(1, 0, host);
  }
  this.once("listening", () => {
    const a = this.address();
    const h = a.family === "IPv6" ? `[${a.address}]` : a.address;
    console.error(`everything: listening on http://${h}:${a.port}${path}`);
  });
  return listen.apply(this, args);
};

process.env.PORT = port;
process.env.GZIP_ALLOWED_DOMAINS ??= "invalid";
await import(`@modelcontextprotocol/server-everything/dist/transports/${mode}.js`);
