#!/usr/bin/env python3
"""Order-operations MCP server of the demo shop: the MCP half of the memex "shop" example.

Written with the official MCP Python SDK (`mcp` 2.x, `mcp.server.MCPServer`). In-memory state
seeded from orders.json next to this file; each process starts from the seed again (memex starts
one process per stdio connection). Its state is separate from shop_api.py's.

Tools (every one takes the merchant id; another merchant's order is "not found"):

  track_shipment(merchant_id, order_id)                   readOnlyHint=true
  cancel_order(merchant_id, order_id, reason)             destructiveHint=true
  update_shipping_address(merchant_id, order_id, address) readOnlyHint=false, destructiveHint=false

Failures (unknown order, another merchant's order, an order that has shipped) come back as tool
errors (isError: true) with a sentence saying why.

Run:
  python orders_mcp.py                      stdio (the default; what memex.toml uses)
  python orders_mcp.py --http 9002          streamable HTTP at http://127.0.0.1:9002/mcp
                       [--host 127.0.0.1]   (stateless, plain JSON responses)

Environment:
  ORDERS_CALL_LOG  when set, every tool call appends one JSON line {"tool", "args"} (the
                   arguments as received) to this file, flushed per line.
  ORDERS_TOKEN     with --http: when set, requests without `Authorization: Bearer <token>`
                   get 401.
"""

import argparse
import copy
import hmac
import json
import os
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

HERE = Path(__file__).resolve().parent
SEED = HERE / "orders.json"

MerchantId = Annotated[str, Field(description="The merchant that owns the order.")]
OrderId = Annotated[str, Field(description="Order id, e.g. ord_1001.")]

ORDERS: dict[str, dict[str, Any]] = {o["order_id"]: o for o in json.loads(SEED.read_text())}
_lock = threading.Lock()


class ShipmentInfo(BaseModel):
    order_id: str
    order_status: Literal["paid", "shipped", "delivered", "cancelled"]
    shipped: bool = Field(description="False while the order has not left the warehouse.")
    carrier: str | None = None
    tracking_number: str | None = None
    shipment_status: str | None = Field(default=None, description="Carrier status, e.g. in_transit, delivered.")
    eta: str | None = Field(default=None, description="Estimated delivery date (YYYY-MM-DD).")


class CancelResult(BaseModel):
    order_id: str
    status: Literal["cancelled"]
    refunded_cents: int = Field(description="Amount refunded in full by the cancellation.")
    currency: str


class AddressUpdate(BaseModel):
    order_id: str
    shipping_address: str
    previous_address: str


def log_call(tool: str, args: dict[str, Any]) -> None:
    path = os.environ.get("ORDERS_CALL_LOG")
    if not path:
        return
    with _lock, open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"tool": tool, "args": args}) + "\n")
        f.flush()


def owned(merchant_id: str, order_id: str) -> dict[str, Any]:
    order = ORDERS.get(order_id)
    if order is None or order["merchant_id"] != merchant_id:
        raise ToolError(f"order {order_id} not found")
    return order


mcp = MCPServer(
    "orders",
    version="1.0.0",
    instructions="Shipment tracking and order changes for the demo shop. Every tool is scoped to one merchant.",
    log_level="WARNING",
)


@mcp.tool(
    description="Where an order is: carrier, tracking number, carrier status and estimated delivery date.",
    annotations=ToolAnnotations(title="Track shipment", read_only_hint=True),
)
def track_shipment(merchant_id: MerchantId, order_id: OrderId) -> ShipmentInfo:
    log_call("track_shipment", {"merchant_id": merchant_id, "order_id": order_id})
    order = owned(merchant_id, order_id)
    ship = order.get("shipment") or {}
    return ShipmentInfo(
        order_id=order_id,
        order_status=order["status"],
        shipped=bool(ship),
        carrier=ship.get("carrier"),
        tracking_number=ship.get("tracking_number"),
        shipment_status=ship.get("status"),
        eta=ship.get("eta"),
    )


@mcp.tool(
    description=(
        "Cancel an order that has not shipped yet and refund it in full. Cannot be undone. "
        "Orders that have shipped or been delivered cannot be cancelled (offer a return or refund instead)."
    ),
    annotations=ToolAnnotations(title="Cancel order", read_only_hint=False, destructive_hint=True),
)
def cancel_order(
    merchant_id: MerchantId,
    order_id: OrderId,
    reason: Annotated[str, Field(description="Why the order is cancelled; shown to the customer.")],
) -> CancelResult:
    log_call("cancel_order", {"merchant_id": merchant_id, "order_id": order_id, "reason": reason})
    with _lock:
        order = owned(merchant_id, order_id)
        status = order["status"]
        if status in ("shipped", "delivered"):
            done = "shipped" if status == "shipped" else "been delivered"
            raise ToolError(
                f"order {order_id} has already {done} and can no longer be cancelled; "
                "offer a return or a refund instead"
            )
        if status == "cancelled":
            raise ToolError(f"order {order_id} is already cancelled")
        order["status"] = "cancelled"
        order["cancel_reason"] = reason
        return CancelResult(
            order_id=order_id, status="cancelled", refunded_cents=order["total_cents"], currency=order["currency"]
        )


@mcp.tool(
    description="Change where an order will be delivered. Only possible while the order has not shipped.",
    annotations=ToolAnnotations(title="Update shipping address", read_only_hint=False, destructive_hint=False),
)
def update_shipping_address(
    merchant_id: MerchantId,
    order_id: OrderId,
    address: Annotated[str, Field(description="The full new delivery address on one line.")],
) -> AddressUpdate:
    log_call("update_shipping_address", {"merchant_id": merchant_id, "order_id": order_id, "address": address})
    with _lock:
        order = owned(merchant_id, order_id)
        if order["status"] != "paid":
            raise ToolError(
                f"order {order_id} is {order['status']}; the shipping address can only be changed before it ships"
            )
        if not address.strip():
            raise ToolError("the new address is empty")
        previous = order.get("shipping_address", "")
        order["shipping_address"] = address.strip()
        return AddressUpdate(order_id=order_id, shipping_address=order["shipping_address"], previous_address=previous)


class BearerGate:
    """ASGI wrapper: HTTP requests must carry `Authorization: Bearer <token>`; lifespan passes through."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                body = json.dumps({"error": "unauthorized", "detail": "missing or wrong bearer token"}).encode()
                await send({
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b"Bearer"),
                    ],
                })
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def serve_http(server: MCPServer, host: str, port: int, token: str | None) -> None:
    import uvicorn

    app = server.streamable_http_app(stateless_http=True, json_response=True, host=host)
    uvicorn.run(BearerGate(app, token) if token else app, host=host, port=port, log_level="warning")


def main() -> None:
    p = argparse.ArgumentParser(description="Demo shop order-operations MCP server.")
    p.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP at http://HOST:PORT/mcp")
    p.add_argument("--host", default="127.0.0.1")
    a = p.parse_args()
    if a.http is None:
        mcp.run()  # stdio
    else:
        serve_http(mcp, a.host, a.http, os.environ.get("ORDERS_TOKEN") or None)


if __name__ == "__main__":
    main()
