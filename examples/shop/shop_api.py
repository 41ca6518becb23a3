#!/usr/bin/env python3
"""Order API of a small online shop: the OpenAPI half of the memex "shop" example.

A FastAPI service with in-memory state seeded from orders.json (next to this file). memex reads
the spec FastAPI generates at /openapi.json and offers the operations below as tools:

  GET  /v1/orders/{order_id}         lookup_order    (read-only)
  GET  /v1/orders                    list_orders     (read-only)
  POST /v1/orders/{order_id}/refund  refund_order    (write; memex.toml lists it as irreversible)
  POST /v1/orders/{order_id}/notes   add_order_note  (write)

Every operation takes a `merchant_id` (query parameter on the GETs, body field on the POSTs) and
only ever sees that merchant's orders: another merchant's order is a 404, exactly like an unknown
one. refund_order honours an `Idempotency-Key` header: a repeated key returns the first refund and
moves no money.

Run:   python shop_api.py --port 9001 [--host 127.0.0.1]

Environment:
  SHOP_CALL_LOG  when set, every call that reaches an operation appends one JSON line
                   {"op", "merchant_id", "order_id", "body", "idempotency_key", "replayed", "status"}
                 to this file (flushed per line) when the operation finishes. "body" is the JSON
                 body for the POSTs and the filter ({"status", "limit"}) for list_orders, null for
                 lookup_order; "replayed" is true when refund_order answered from its
                 Idempotency-Key record without refunding again; "status" is the HTTP status sent
                 (200, 404, 409). Requests FastAPI rejects before the handler runs (422: missing
                 or invalid parameters) are not logged.
"""

import argparse
import copy
import itertools
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Path as PathParam, Query
from pydantic import BaseModel, Field

HERE = Path(__file__).resolve().parent
SEED = HERE / "orders.json"

OrderStatus = Literal["paid", "shipped", "delivered", "cancelled"]


class RefundRequest(BaseModel):
    merchant_id: str = Field(description="The merchant that owns the order.")
    amount_cents: int = Field(gt=0, description="Amount to refund, in the order's minor currency unit.")
    reason: str = Field(description="Why the refund is issued; shown to the customer.")


class OrderNoteRequest(BaseModel):
    merchant_id: str = Field(description="The merchant that owns the order.")
    note: str = Field(min_length=1, description="Internal note text, visible to support staff only.")


class Store:
    """All state, guarded by one lock (handlers are plain `def`, so they run in a thread pool)."""

    def __init__(self, seed: list[dict[str, Any]]):
        self.lock = threading.Lock()
        self.orders: dict[str, dict[str, Any]] = {o["order_id"]: copy.deepcopy(o) for o in seed}
        # Cancelling refunds an order in full, so a seeded cancelled order has nothing left to refund.
        self.refunded: dict[str, int] = {
            oid: (o["total_cents"] if o["status"] == "cancelled" else 0) for oid, o in self.orders.items()
        }
        self.refunds: dict[str, list[dict[str, Any]]] = {oid: [] for oid in self.orders}
        self.notes: dict[str, list[dict[str, Any]]] = {oid: [] for oid in self.orders}
        self.idempotent: dict[tuple[str, str], dict[str, Any]] = {}
        self.refund_seq = itertools.count(1)
        self.note_seq = itertools.count(1)

    def owned(self, merchant_id: str, order_id: str) -> dict[str, Any]:
        order = self.orders.get(order_id)
        if order is None or order["merchant_id"] != merchant_id:
            raise HTTPException(status_code=404, detail=f"order {order_id} not found")
        return order

    def view(self, order: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(order)
        oid = order["order_id"]
        out["refunded_cents"] = self.refunded[oid]
        out["refunds"] = copy.deepcopy(self.refunds[oid])
        out["notes"] = copy.deepcopy(self.notes[oid])
        return out


store = Store(json.loads(SEED.read_text()))
_log_lock = threading.Lock()


@contextmanager
def logged(op: str, merchant_id: str, order_id: str | None, body: Any = None,
           idempotency_key: str | None = None) -> Iterator[dict[str, Any]]:
    """Appends the call's JSON line to $SHOP_CALL_LOG once the operation has finished (or failed)."""
    record = {
        "op": op,
        "merchant_id": merchant_id,
        "order_id": order_id,
        "body": body,
        "idempotency_key": idempotency_key,
        "replayed": False,
        "status": 200,
    }
    try:
        yield record
    except HTTPException as e:
        record["status"] = e.status_code
        raise
    except Exception:
        record["status"] = 500
        raise
    finally:
        path = os.environ.get("SHOP_CALL_LOG")
        if path:
            with _log_lock, open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


app = FastAPI(
    title="Shop order API",
    version="1.0.0",
    description="Orders, refunds and internal notes of the demo shop. Every operation is scoped to one merchant.",
)


@app.get(
    "/v1/orders/{order_id}",
    operation_id="lookup_order",
    summary="Look up one order: items, totals, status, shipment, refunds and notes",
)
def lookup_order(
    order_id: str = PathParam(description="Order id, e.g. ord_1001."),
    merchant_id: str = Query(description="The merchant that owns the order."),
) -> dict[str, Any]:
    with logged("lookup_order", merchant_id, order_id), store.lock:
        return store.view(store.owned(merchant_id, order_id))


@app.get(
    "/v1/orders",
    operation_id="list_orders",
    summary="List the merchant's orders, newest first, optionally filtered by status",
)
def list_orders(
    merchant_id: str = Query(description="The merchant whose orders to list."),
    status: OrderStatus | None = Query(default=None, description="Only orders in this status."),
    limit: int = Query(default=20, ge=1, le=100, description="At most this many orders."),
) -> dict[str, Any]:
    with logged("list_orders", merchant_id, None, {"status": status, "limit": limit}), store.lock:
        mine = [o for o in store.orders.values() if o["merchant_id"] == merchant_id]
        if status is not None:
            mine = [o for o in mine if o["status"] == status]
        mine.sort(key=lambda o: o["created_at"], reverse=True)
        return {"orders": [store.view(o) for o in mine[:limit]], "total": len(mine)}


@app.post(
    "/v1/orders/{order_id}/refund",
    operation_id="refund_order",
    summary="Refund part or all of an order to the customer's original payment method",
)
def refund_order(
    body: RefundRequest,
    order_id: str = PathParam(description="Order id, e.g. ord_1001."),
    # Sent by the caller (memex), never chosen by the model: kept out of the published spec.
    idempotency_key: str | None = Header(default=None, alias="Idempotency-Key", include_in_schema=False),
) -> dict[str, Any]:
    with logged("refund_order", body.merchant_id, order_id, body.model_dump(), idempotency_key) as rec, store.lock:
        key = (body.merchant_id, idempotency_key) if idempotency_key else None
        first = store.idempotent.get(key) if key else None
        if first is not None:
            rec["replayed"] = True
            return copy.deepcopy(first)
        order = store.owned(body.merchant_id, order_id)
        remaining = order["total_cents"] - store.refunded[order_id]
        if remaining <= 0:
            raise HTTPException(status_code=409, detail=f"order {order_id} is already fully refunded")
        if body.amount_cents > remaining:
            raise HTTPException(
                status_code=409,
                detail=(
                    f"refund of {body.amount_cents} cents exceeds the refundable balance of {remaining} cents "
                    f"on order {order_id} (total {order['total_cents']}, already refunded "
                    f"{store.refunded[order_id]})"
                ),
            )
        refund = {
            "refund_id": f"re_{next(store.refund_seq):04d}",
            "order_id": order_id,
            "amount_cents": body.amount_cents,
            "currency": order["currency"],
            "reason": body.reason,
            "status": "refunded",
            "created_at": now(),
        }
        store.refunded[order_id] += body.amount_cents
        store.refunds[order_id].append(refund)
        if key:
            store.idempotent[key] = refund
        return copy.deepcopy(refund)


@app.post(
    "/v1/orders/{order_id}/notes",
    operation_id="add_order_note",
    summary="Attach an internal support note to an order (not shown to the customer)",
)
def add_order_note(
    body: OrderNoteRequest,
    order_id: str = PathParam(description="Order id, e.g. ord_1001."),
) -> dict[str, Any]:
    with logged("add_order_note", body.merchant_id, order_id, body.model_dump()), store.lock:
        store.owned(body.merchant_id, order_id)
        note = {
            "note_id": f"note_{next(store.note_seq):04d}",
            "order_id": order_id,
            "merchant_id": body.merchant_id,
            "note": body.note,
            "created_at": now(),
        }
        store.notes[order_id].append(note)
        return copy.deepcopy(note)


def main() -> None:
    p = argparse.ArgumentParser(description="Demo shop order API (FastAPI).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--log-level", default="info")
    a = p.parse_args()
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level)


if __name__ == "__main__":
    main()
