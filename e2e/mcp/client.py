"""MCP client fixture on the official Python SDK (`mcp` 2.x).

    $FIX/venv/bin/python e2e/mcp/client.py --url URL --transport streamable|sse \
        [--header K=V ...] [--mode auto|legacy|2026-07-28] < steps.json

stdin:  a JSON array of steps (ops: list_tools, call_tool{name,arguments},
        list_prompts, get_prompt{name,arguments}, list_resources, read_resource{uri},
        ping).
stdout: one JSON object {"steps": [...]}, one entry per step, in order:
        {"ok": <result>} or {"error": {"code": int|null, "message": str, "data": any}}.
        For an MCPError (the SDK's McpError) code/message/data are its `.error`
        (the JSON-RPC error). Any other exception has code null and data
        {"exception": <class name>}.
stderr: "client.py: protocolVersion=<negotiated>" after connecting, and diagnostics;
        with --trace one "client.py: http ..." line per HTTP request (method, URL,
        MCP headers, status, content type).
Exit:   0 when connected (step errors are in the output), 1 when connect failed
        (every step then carries the connect error), 2 on bad usage or input.

--transport streamable = `streamable_http_client`, sse = `sse_client` (deprecated
HTTP+SSE). --mode is the SDK's `Client(mode=...)`:
  auto        (SDK default) POST `server/discover` at 2026-07-28 first, fall back to
              the `initialize` handshake when the server is not a 2026-07-28 server;
  legacy      `initialize` handshake only (2025-11-25 and older);
  2026-07-28  no probe: every request is a stateless 2026-07-28 request carrying
              MCP-Protocol-Version, Mcp-Method and (tools/call, prompts/get,
              resources/read) Mcp-Name headers plus the `_meta` envelope.
The SDK's client response cache is disabled (cache=None) so every step reaches the
server. `ping` does not exist at 2026-07-28 (the SDK deprecates it).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

import anyio
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

# send_ping is deprecated as of 2026-07-28; this fixture calls it on purpose.
warnings.filterwarnings("ignore", message=".*2026-07-28.*")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="client.py", description="MCP Python SDK client fixture")
    p.add_argument("--url", required=True)
    p.add_argument("--transport", required=True, choices=["streamable", "sse"])
    p.add_argument("--header", action="append", default=[], metavar="K=V")
    p.add_argument("--mode", default="auto", help="auto (default), legacy, or 2026-07-28")
    p.add_argument("--trace", action="store_true", help="log each HTTP exchange to stderr")
    args = p.parse_args(argv)
    headers: dict[str, str] = {}
    for kv in args.header:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            p.error(f"--header wants K=V, got {kv!r}")
        headers[k] = v
    args.headers = headers
    return args


_TRACED = ("mcp-protocol-version", "mcp-method", "mcp-name", "mcp-session-id")


def http_client_factory(trace: bool):
    """`create_mcp_http_client` plus, with --trace, request/response logging hooks."""

    def factory(headers: dict[str, str] | None = None, timeout: Any = None, auth: Any = None) -> Any:
        client = create_mcp_http_client(headers=headers, timeout=timeout, auth=auth)
        if trace:

            async def on_response(response: Any) -> None:
                req = response.request
                mcp = " ".join(f"{h}={req.headers[h]}" for h in _TRACED if h in req.headers)
                ctype = response.headers.get("content-type", "-").split(";")[0]
                print(
                    f"client.py: http {req.method} {req.url} {mcp} -> {response.status_code} {ctype}".replace("  ", " "),
                    file=sys.stderr,
                )

            client.event_hooks = {"request": [], "response": [on_response]}
        return client

    return factory


def to_json(result: Any) -> Any:
    if result is None:
        return None
    return result.model_dump(by_alias=True, mode="json", exclude_unset=True)


def error_entry(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MCPError):
        err = exc.error
        return {"error": {"code": err.code, "message": err.message, "data": err.data}}
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return error_entry(exc.exceptions[0])
    return {"error": {"code": None, "message": str(exc), "data": {"exception": type(exc).__name__}}}


async def run_step(client: Client, step: Any) -> Any:
    op = step.get("op") if isinstance(step, dict) else None
    if op == "list_tools":
        return await client.list_tools()
    if op == "call_tool":
        return await client.call_tool(step["name"], step.get("arguments") or {})
    if op == "list_prompts":
        return await client.list_prompts()
    if op == "get_prompt":
        return await client.get_prompt(step["name"], step.get("arguments") or {})
    if op == "list_resources":
        return await client.list_resources()
    if op == "read_resource":
        return await client.read_resource(step["uri"])
    if op == "ping":
        return await client.send_ping()
    raise ValueError(f"unknown op {json.dumps(op)}")


async def main(args: argparse.Namespace, steps: list[Any]) -> int:
    if args.transport == "streamable":
        http_client = http_client_factory(args.trace)(headers=args.headers)
        transport = streamable_http_client(args.url, http_client=http_client)
    else:
        transport = sse_client(args.url, headers=args.headers, httpx_client_factory=http_client_factory(args.trace))
    results: list[dict[str, Any]] = []
    client = Client(transport, mode=args.mode, cache=None)
    try:
        await client.__aenter__()
    except Exception as exc:  # noqa: BLE001 - reported in the output
        entry = error_entry(exc)
        print(f"client.py: connect failed: {entry['error']['message']}", file=sys.stderr)
        print(json.dumps({"steps": [entry] * len(steps)}))
        return 1
    try:
        print(f"client.py: protocolVersion={client.protocol_version}", file=sys.stderr)
        for step in steps:
            try:
                results.append({"ok": to_json(await run_step(client, step))})
            except Exception as exc:  # noqa: BLE001 - one failing step must not stop the rest
                results.append(error_entry(exc))
    finally:
        await client.__aexit__(None, None, None)
    print(json.dumps({"steps": results}))
    return 0


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    try:
        steps = json.load(sys.stdin)
    except json.JSONDecodeError as e:
        print(f"client.py: stdin is not JSON: {e}", file=sys.stderr)
        sys.exit(2)
    if not isinstance(steps, list):
        print("client.py: stdin must be a JSON array of steps", file=sys.stderr)
        sys.exit(2)
    try:
        Client(args.url, mode=args.mode)  # validates --mode before connecting
    except ValueError as e:
        print(f"client.py: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(anyio.run(main, args, steps))
