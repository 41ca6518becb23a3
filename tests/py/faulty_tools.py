#!/usr/bin/env python3
"""Fault-injection tool servers for memex's "tools from outside" tests.

Two modes, one file:

  python faulty_tools.py api --port P [--host 127.0.0.1]
      A FastAPI service; its spec is at http://HOST:P/openapi.json. Operations:
        GET  /slow?seconds=S   slow_lookup     sleeps S seconds, then {"ok": true, "slept": S}
        GET  /garbage          garbage_lookup  200 with a text/plain body `<html>oops` (not JSON),
                                               though the spec promises application/json
        GET  /flaky?fail=N     flaky_lookup    503 for the first N calls to /flaky in this process
                                               (counted across all calls, whatever N says), then
                                               {"ok": true, "calls": n} (n = this call's number)
        POST /explode          explode_write   always 500; JSON body {"text": str} (optional field)

  python faulty_tools.py mcp [--http PORT] [--host 127.0.0.1]
      An MCP server (official SDK, mcp 2.x MCPServer), stdio by default, or stateless streamable
      HTTP with JSON responses at http://HOST:PORT/mcp. Tools, all readOnlyHint=true:
        slow_echo(text: str, seconds: float)  sleeps, then returns text (structured {"result": text})
        fails(text: str)                      always a tool error (isError: true), text
                                              "Error executing tool fails: deliberate failure: <text>"
                                              (the SDK adds the prefix); no outputSchema
        plain_text(text: str)                 unstructured text content that is not JSON, no
                                              structuredContent, no outputSchema

Environment:
  FAULTY_CALL_LOG  when set, each call appends one JSON line to this file (flushed per line):
                   api: {"op": OPERATION_ID, "args": {...}} when the handler starts (so a slow
                   call is logged even if the caller gives up); mcp: {"tool": NAME, "args": {...}}.
"""

import argparse
import asyncio
import itertools
import json
import os
import threading
from typing import Any

_log_lock = threading.Lock()


def log_line(record: dict[str, Any]) -> None:
    path = os.environ.get("FAULTY_CALL_LOG")
    if not path:
        return
    with _log_lock, open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def build_api():
    from fastapi import FastAPI, Query
    from fastapi.responses import JSONResponse, PlainTextResponse
    from pydantic import BaseModel, Field

    app = FastAPI(title="Faulty API", version="1.0.0", description="Deliberately misbehaving operations.")
    flaky_calls = itertools.count(1)

    class ExplodeRequest(BaseModel):
        text: str = Field(default="boom", description="Anything; the operation fails regardless.")

    @app.get("/slow", operation_id="slow_lookup", summary="Sleep for the given number of seconds, then answer")
    async def slow(seconds: float = Query(description="How long to sleep before answering.")) -> dict[str, Any]:
        log_line({"op": "slow_lookup", "args": {"seconds": seconds}})
        await asyncio.sleep(max(0.0, seconds))
        return {"ok": True, "slept": seconds}

    @app.get(
        "/garbage",
        operation_id="garbage_lookup",
        summary="Look something up (answers 200 with a text/plain body that is not JSON)",
    )
    async def garbage() -> PlainTextResponse:
        log_line({"op": "garbage_lookup", "args": {}})
        return PlainTextResponse("<html>oops", status_code=200)

    @app.get("/flaky", operation_id="flaky_lookup", summary="Fail with 503 for the first `fail` calls, then succeed")
    async def flaky(fail: int = Query(default=1, description="How many calls (per process) fail with 503.")):
        n = next(flaky_calls)
        log_line({"op": "flaky_lookup", "args": {"fail": fail}, "call": n})
        if n <= fail:
            return JSONResponse({"detail": f"temporarily unavailable (call {n})"}, status_code=503,
                                headers={"Retry-After": "0"})
        return {"ok": True, "calls": n}

    @app.post("/explode", operation_id="explode_write", summary="A write that always fails with 500")
    async def explode(body: ExplodeRequest):
        log_line({"op": "explode_write", "args": body.model_dump()})
        return JSONResponse({"detail": "internal error: the write exploded"}, status_code=500)

    class SlowWriteRequest(BaseModel):
        seconds: float = Field(description="How long to sleep before answering.")

    @app.post("/slow_write", operation_id="slow_write", summary="A write that answers only after a pause")
    async def slow_write(body: SlowWriteRequest) -> dict[str, Any]:
        log_line({"op": "slow_write", "args": body.model_dump()})
        await asyncio.sleep(max(0.0, body.seconds))
        return {"ok": True}

    return app


def build_mcp():
    from typing import Annotated

    from mcp.server import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import ToolAnnotations
    from pydantic import Field

    server = MCPServer("faulty", version="1.0.0", log_level="WARNING")
    read_only = ToolAnnotations(read_only_hint=True)

    @server.tool(description="Sleep for `seconds`, then echo `text` back.", annotations=read_only)
    async def slow_echo(
        text: Annotated[str, Field(description="Text to echo.")],
        seconds: Annotated[float, Field(description="How long to sleep first.")],
    ) -> str:
        log_line({"tool": "slow_echo", "args": {"text": text, "seconds": seconds}})
        await asyncio.sleep(max(0.0, seconds))
        return text

    @server.tool(description="Always fails with a tool error.", annotations=read_only, structured_output=False)
    def fails(text: Annotated[str, Field(description="Included in the error message.")]) -> str:
        log_line({"tool": "fails", "args": {"text": text}})
        raise ToolError(f"deliberate failure: {text}")

    @server.tool(
        description="Answers with plain, non-JSON text content.",
        annotations=read_only,
        structured_output=False,
    )
    def plain_text(text: Annotated[str, Field(description="Included in the answer.")]) -> str:
        log_line({"tool": "plain_text", "args": {"text": text}})
        return f"plain answer: {text} <not json> {{unbalanced"

    return server


def main() -> None:
    p = argparse.ArgumentParser(description="Fault-injection tool servers (OpenAPI and MCP).")
    sub = p.add_subparsers(dest="mode", required=True)
    api = sub.add_parser("api", help="FastAPI service with misbehaving operations")
    api.add_argument("--port", type=int, required=True)
    api.add_argument("--host", default="127.0.0.1")
    m = sub.add_parser("mcp", help="MCP server with misbehaving tools (stdio unless --http)")
    m.add_argument("--http", type=int, metavar="PORT")
    m.add_argument("--host", default="127.0.0.1")
    a = p.parse_args()

    import uvicorn

    if a.mode == "api":
        uvicorn.run(build_api(), host=a.host, port=a.port, log_level="warning")
    else:
        server = build_mcp()
        if a.http is None:
            server.run()
        else:
            app = server.streamable_http_app(stateless_http=True, json_response=True, host=a.host)
            uvicorn.run(app, host=a.host, port=a.http, log_level="warning")


if __name__ == "__main__":
    main()
