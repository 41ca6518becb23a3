#!/usr/bin/env python3
"""Drive a memex MCP server with the official MCP Python SDK (PyPI `mcp`) and print what it saw.

One MCP session per run: initialize, list the tools, then the given tool calls in order. Prints
one JSON object on stdout:

  {"server": {"name", "version"}, "tools": [{"name", "description", "inputSchema", "annotations"}],
   "results": [{"tool", "is_error", "text", "structured"}]}

or, when the server refuses the connection (a missing or wrong bearer key on /mcp),
{"error": "..."} — with exit status 0 in both cases, so the caller asserts on the JSON.

Transports:
  --stdio CMD [ARG ...]   spawn `memex mcp --merchant MID` (the environment's MEMEX_* variables
                          are passed on), e.g. --stdio target/release/memex mcp --merchant MID001
  --url URL [--bearer KEY] streamable HTTP, e.g. http://127.0.0.1:8080/mcp (memex serve's /mcp
                          with `--bearer KEY`, or `memex mcp --http ADDR`)

Calls: --calls '[{"tool": "search_knowledge_base", "args": {"query": "refund"}}, ...]'
(or --calls-file FILE).

Modes (--mode):
  session (default)  `ClientSession` + `initialize()`: the handshake-era API;
  auto               the SDK's default `Client` (probes `server/discover`, falls back to the
                     handshake): the output then also carries "protocol_version";
  legacy             `Client(..., mode="legacy")`: the handshake only.
"""

import argparse
import asyncio
import json
import os
import sys

from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def dump(model):
    if model is None:
        return None
    if hasattr(model, "model_dump"):
        return model.model_dump(by_alias=True, exclude_none=True, mode="json")
    return model


async def run_session(session, calls):
    init = await session.initialize()
    info = getattr(init, "server_info", None) or getattr(init, "serverInfo", None)
    out = {"server": dump(info), "tools": [], "results": []}
    listed = await session.list_tools()
    out["tools"] = [dump(t) for t in listed.tools]
    for call in calls:
        result = await session.call_tool(call["tool"], call.get("args", {}))
        text = "".join(getattr(c, "text", "") for c in result.content)
        structured = getattr(result, "structured_content", None)
        if structured is None:
            structured = getattr(result, "structuredContent", None)
        out["results"].append(
            {
                "tool": call["tool"],
                "is_error": bool(result.is_error if hasattr(result, "is_error") else result.isError),
                "text": text,
                "structured": structured,
            }
        )
    return out


async def run_client(server, mode, calls):
    """The SDK's high-level `Client` (`mode` "auto" or "legacy") over `server`."""
    async with Client(server, mode=mode) as client:
        info = client.server_info
        out = {
            "server": dump(info),
            "protocol_version": str(client.protocol_version),
            "tools": [],
            "results": [],
        }
        listed = await client.list_tools()
        out["tools"] = [dump(t) for t in listed.tools]
        for call in calls:
            try:
                result = await client.call_tool(call["tool"], call.get("args", {}))
            except Exception as e:  # the SDK validates structured content against outputSchema
                out["results"].append({"tool": call["tool"], "client_error": f"{type(e).__name__}: {e}"[:2000]})
                continue
            text = "".join(getattr(c, "text", "") for c in result.content)
            out["results"].append(
                {
                    "tool": call["tool"],
                    "is_error": bool(result.is_error),
                    "text": text,
                    "structured": result.structured_content,
                }
            )
    return out


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url")
    p.add_argument("--bearer")
    p.add_argument("--calls", default="[]")
    p.add_argument("--calls-file")
    p.add_argument("--mode", choices=["session", "auto", "legacy"], default="session")
    p.add_argument("--stdio", nargs=argparse.REMAINDER)
    a = p.parse_args()
    calls = json.loads(open(a.calls_file).read() if a.calls_file else a.calls)
    if a.mode != "session":
        if a.stdio:
            env = {k: v for k, v in os.environ.items() if k.startswith(("MEMEX_", "RUST_", "NO_COLOR"))}
            server = StdioServerParameters(command=a.stdio[0], args=a.stdio[1:], env=env)
            out = await run_client(server, a.mode, calls)
        elif a.url:
            headers = {"Authorization": f"Bearer {a.bearer}"} if a.bearer else None
            try:
                async with create_mcp_http_client(headers=headers) as http:
                    out = await run_client(streamable_http_client(a.url, http_client=http), a.mode, calls)
            except BaseException as e:
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                out = {"error": f"{type(e).__name__}: {e!r}"[:2000]}
        else:
            p.error("give --stdio CMD ... or --url URL")
    elif a.stdio:
        env = {k: v for k, v in os.environ.items() if k.startswith(("MEMEX_", "RUST_", "NO_COLOR"))}
        params = StdioServerParameters(command=a.stdio[0], args=a.stdio[1:], env=env)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                out = await run_session(session, calls)
    elif a.url:
        headers = {"Authorization": f"Bearer {a.bearer}"} if a.bearer else None
        try:
            async with create_mcp_http_client(headers=headers) as client:
                async with streamable_http_client(a.url, http_client=client) as (read, write):
                    async with ClientSession(read, write) as session:
                        out = await run_session(session, calls)
        except BaseException as e:  # the SDK raises an ExceptionGroup from its task group
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            out = {"error": f"{type(e).__name__}: {e!r}"[:2000]}
    else:
        p.error("give --stdio CMD ... or --url URL")
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
