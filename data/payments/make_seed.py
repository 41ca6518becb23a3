#!/usr/bin/env python3
"""Generate data/payments/seed.json: demo merchants and transactions for memex.

Deterministic (fixed seed). Amounts are whole rupees (major INR units).
Settlement follows the knowledge base: T+2 working days, where working days
exclude Sundays, the 2nd and 4th Saturdays and bank holidays; settlements are
credited around 1:00 PM IST (07:30 UTC). "Now" for the demo is 2026-03-30.

    python3 data/payments/make_seed.py
"""

import json
import random
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

SEED = 4999
HERE = Path(__file__).resolve().parent
NOW = datetime(2026, 3, 30, 12, 0, tzinfo=timezone.utc)
HOLIDAYS = {date(2026, 3, 4)}  # Holi
IST = timedelta(hours=5, minutes=30)
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

MERCHANTS = [
    dict(id="MID001", name="Anil Sharma", business_name="Sharma Handicrafts",
         email="anil@sharmahandicrafts.in", status="active", kyc_status="verified",
         settlement_account="HDFC Bank XXXXXXXX4821", settlement_hold=None),
    dict(id="MID002", name="Meera Iyer", business_name="Kaveri Ayurveda Pvt Ltd",
         email="accounts@kaveriayurveda.com", status="active", kyc_status="verified",
         settlement_account="ICICI Bank XXXXXXXX0937", settlement_hold=None),
    dict(id="MID003", name="Imran Khan", business_name="Nimbus Travels",
         email="imran@nimbustravels.co.in", status="active", kyc_status="rekyc_pending",
         settlement_account="Axis Bank XXXXXXXX5512", settlement_hold="kyc"),
    dict(id="MID004", name="Lakshmi Nair", business_name="GreenLeaf Organics",
         email="hello@greenleaforganics.in", status="active", kyc_status="verified",
         settlement_account="Federal Bank XXXXXXXX2206", settlement_hold=None),
    dict(id="MID005", name="Rohit Verma", business_name="CodeCraft Academy",
         email="rohit@codecraft.academy", status="under_review", kyc_status="pending",
         settlement_account="Kotak Mahindra Bank XXXXXXXX7790", settlement_hold=None),
    dict(id="MID006", name="Gurpreet Singh", business_name="Metro Mobile Repairs",
         email="support@metromobilerepairs.in", status="suspended", kyc_status="verified",
         settlement_account="Punjab National Bank XXXXXXXX3318", settlement_hold="risk"),
    dict(id="MID007", name="Ayesha Menon", business_name="Lotus Yoga Studio LLP",
         email="ayesha@lotusyoga.studio", status="active", kyc_status="verified",
         settlement_account="SBI XXXXXXXX6045", settlement_hold=None),
    dict(id="MID008", name="Karan Malhotra", business_name="Zephyr Fashion",
         email="karan@zephyrfashion.in", status="activated_kyc_pending", kyc_status="under_review",
         settlement_account="Yes Bank XXXXXXXX1174", settlement_hold="kyc"),
]

CUSTOMERS = [
    "Aditya Rao", "Sneha Reddy", "Vikram Patel", "Kavya Nair", "Neha Gupta",
    "Arjun Mehta", "Pooja Joshi", "Sanjay Das", "Divya Menon", "Amit Agarwal",
    "Ritu Bose", "Suresh Pillai", "Farah Khan", "Harish Kulkarni", "Nandini Desai",
    "Tanvi Shetty", "Deepak Verma", "Shreya Chatterjee", "Manoj Singh", "Joseph Thomas",
    "Fatima Sheikh", "Venkat Raman", "Bhavna Malhotra", "Nikhil Jain", "Swati Kapoor",
]
AMOUNTS = [299, 499, 799, 999, 1299, 1499, 1999, 2499, 2999, 3499, 4999, 5999,
           7499, 8999, 12999, 15000, 18500, 24999, 32000, 45000]
METHODS = ["upi", "upi", "upi", "card", "card", "netbanking", "wallet"]
FAIL_CODES = {
    "upi": ["UPI_COLLECT_EXPIRED", "INSUFFICIENT_FUNDS", "INVALID_VPA", "UPI_LIMIT_EXCEEDED", "GATEWAY_ERROR"],
    "card": ["AUTHENTICATION_FAILED", "PAYMENT_DECLINED", "INSUFFICIENT_FUNDS", "GATEWAY_ERROR", "CARD_EXPIRED"],
    "netbanking": ["BANK_UNAVAILABLE", "PAYMENT_TIMEOUT", "GATEWAY_ERROR"],
    "wallet": ["INSUFFICIENT_FUNDS", "PAYMENT_DECLINED"],
}


def rid(rng, prefix, n=14):
    return prefix + "".join(rng.choice(ALNUM) for _ in range(n))


def working_day(d):
    if d in HOLIDAYS or d.weekday() == 6:
        return False
    if d.weekday() == 5 and (d.day - 1) // 7 + 1 in (2, 4):
        return False
    return True


def settle_date(created_utc):
    """T+2 working days; T is the IST capture day, moved to a working day."""
    t = (created_utc + IST).date()
    while not working_day(t):
        t += timedelta(days=1)
    d, left = t, 2
    while left:
        d += timedelta(days=1)
        if working_day(d):
            left -= 1
    return datetime(d.year, d.month, d.day, 7, 30, tzinfo=timezone.utc)


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def main():
    rng = random.Random(SEED)
    txns = []
    # Fixed demo cases required by the scenario.
    fixed = [
        dict(id="pay_ABC123", merchant_id="MID001", customer_name="Priya Sharma", amount=4999,
             status="captured", method="upi", error_code=None,
             created=datetime(2026, 3, 28, 14, 23, tzinfo=timezone.utc), refunded_amount=0),
        dict(id="pay_XYZ789", merchant_id="MID002", customer_name="Rahul Kumar", amount=12500,
             status="failed", method="card", error_code="GATEWAY_ERROR",
             created=datetime(2026, 3, 29, 9, 11, tzinfo=timezone.utc), refunded_amount=0),
    ]
    # MID005 is still under review, so it has no live payments.
    plan = {"MID001": 12, "MID002": 11, "MID003": 9, "MID004": 8, "MID005": 0,
            "MID006": 6, "MID007": 8, "MID008": 4}
    for mid, n in plan.items():
        for _ in range(n):
            method = rng.choice(METHODS)
            day = rng.randint(2, 30)
            created = datetime(2026, 3, day, rng.randint(0, 17), rng.choice([3, 11, 17, 26, 34, 42, 48, 55]),
                               tzinfo=timezone.utc)
            if created > NOW:
                created -= timedelta(days=3)
            amount = rng.choice(AMOUNTS)
            r = rng.random()
            if r < 0.58:
                status = "captured"
            elif r < 0.76:
                status = "failed"
            elif r < 0.85:
                status = "refunded"
            elif r < 0.96:
                status = "partially_refunded"
            else:
                status = "authorized"
                # Uncaptured payments are auto-refunded after 5 days, so keep them recent.
                if created < NOW - timedelta(days=4):
                    created = NOW - timedelta(days=rng.randint(1, 3), hours=rng.randint(1, 9))
            refunded = amount if status == "refunded" else (
                rng.choice([a for a in AMOUNTS if a < amount] or [amount // 2]) if status == "partially_refunded" else 0)
            code = rng.choice(FAIL_CODES[method]) if status == "failed" else None
            txns.append(dict(id=rid(rng, "pay_"), merchant_id=mid, customer_name=rng.choice(CUSTOMERS),
                             amount=amount, status=status, method=method, error_code=code,
                             created=created, refunded_amount=refunded))
    txns.extend(fixed)
    txns.sort(key=lambda t: (t["created"], t["id"]))

    hold = {m["id"]: m["settlement_hold"] for m in MERCHANTS}
    setl_ids = {}
    out = []
    for t in txns:
        settlement_id = settled_at = None
        settles = t["status"] in ("captured", "refunded", "partially_refunded")
        if settles and hold[t["merchant_id"]] is None and t["id"] != "pay_ABC123":
            when = settle_date(t["created"])
            if when <= NOW:
                key = (t["merchant_id"], when.date())
                if key not in setl_ids:
                    setl_ids[key] = rid(rng, "setl_")
                settlement_id, settled_at = setl_ids[key], iso(when)
        out.append(dict(id=t["id"], merchant_id=t["merchant_id"], customer_name=t["customer_name"],
                        amount=t["amount"], currency="INR", status=t["status"], method=t["method"],
                        error_code=t["error_code"], created_at=iso(t["created"]),
                        settlement_id=settlement_id, settled_at=settled_at,
                        refunded_amount=t["refunded_amount"]))

    merchants = []
    for m in MERCHANTS:
        mine = [t for t in out if t["merchant_id"] == m["id"]]
        pending = sum(t["amount"] - t["refunded_amount"] for t in mine
                      if t["status"] in ("captured", "partially_refunded") and t["settlement_id"] is None)
        settled_net = sum(t["amount"] - t["refunded_amount"] for t in mine if t["settlement_id"])
        merchants.append(dict(id=m["id"], name=m["name"], business_name=m["business_name"],
                              email=m["email"], status=m["status"], kyc_status=m["kyc_status"],
                              settlement_account=m["settlement_account"], settlement_cycle="T+2",
                              settlement_hold=m["settlement_hold"],
                              balance=pending, pending_settlement=pending,
                              settled_this_month=settled_net))
    seed = {
        "units": "major INR units: all amounts are whole rupees as integers (4999 means INR 4,999.00)",
        "as_of": iso(NOW),
        "field_notes": {
            "balance": "gross amount collected and not yet settled, after refunds (before fees and GST)",
            "pending_settlement": "part of balance due in upcoming T+2 settlements; equals balance when nothing is on hold",
            "settlement_hold": "null, 'kyc' or 'risk'; when set, no payment of the merchant is settled",
            "settled_this_month": "gross amount of payments settled in March 2026, after refunds",
            "refunded_amount": "total refunded on the payment so far, in whole rupees",
        },
        "merchants": merchants,
        "transactions": out,
    }
    for m in seed["merchants"]:
        if m["settlement_hold"]:
            m["pending_settlement"] = 0
    with open(HERE / "seed.json", "w", encoding="utf-8") as fh:
        json.dump(seed, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    print(len(merchants), "merchants,", len(out), "transactions")


if __name__ == "__main__":
    main()
