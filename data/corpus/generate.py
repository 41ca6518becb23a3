#!/usr/bin/env python3
"""Generate the embedding benchmark corpus for memex.

Writes two files next to this script:

* ``texts.jsonl``   - at least 2,500 lines ``{"text": "..."}`` of varied-length
  payments-support text: short search queries, merchant support messages
  (some Hinglish in Latin script, many with payment IDs and amounts),
  knowledge-base paragraphs taken from ``data/kb`` and a few long texts.
* ``queries.jsonl`` - 200 short queries of 12-16 words each, for latency
  benchmarks.

The output is fully deterministic: a fixed seed, sorted file listing and
order-preserving de-duplication. Run from anywhere:

    python3 data/corpus/generate.py
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

SEED = 20260328
HERE = Path(__file__).resolve().parent
KB_DIR = HERE.parent / "kb"

N_QUERIES = 980
N_MESSAGES = 980
N_KB_PARAS = 640
N_LONG = 80
N_LATENCY_QUERIES = 200

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

# ----------------------------------------------------------------------------
# Vocabularies
# ----------------------------------------------------------------------------

FIRST_NAMES = [
    "Priya", "Rahul", "Anjali", "Vikram", "Sneha", "Arjun", "Kavya", "Rohit",
    "Neha", "Aditya", "Pooja", "Karan", "Meera", "Sanjay", "Divya", "Amit",
    "Ritu", "Suresh", "Lakshmi", "Imran", "Farah", "Gurpreet", "Harish",
    "Nandini", "Tanvi", "Deepak", "Shreya", "Manoj", "Ayesha", "Joseph",
    "Fatima", "Venkat", "Bhavna", "Nikhil", "Swati", "Rajesh", "Ishaan",
]
LAST_NAMES = [
    "Sharma", "Kumar", "Patel", "Iyer", "Reddy", "Singh", "Gupta", "Nair",
    "Mehta", "Khan", "Das", "Joshi", "Verma", "Menon", "Chatterjee", "Rao",
    "Agarwal", "Pillai", "Bose", "Desai", "Kulkarni", "Shetty", "Malhotra",
]
BUSINESSES = [
    "Sharma Handicrafts", "Chai Point Express", "Kumar Electronics",
    "Bloom Florists", "GreenLeaf Organics", "Urban Threads", "FitZone Gym",
    "Rangoli Sarees", "TechNest Solutions", "Spice Route Kitchen",
    "BookBazaar", "Little Steps Playschool", "Nimbus Travels",
    "PetPals Store", "Kaveri Ayurveda", "Metro Mobile Repairs",
    "Himalayan Honey Co", "Desi Bites Cloud Kitchen", "CodeCraft Academy",
    "Sunrise Pharmacy", "Zephyr Fashion", "Bharat Hardware Mart",
    "Lotus Yoga Studio", "QuickCart Grocery", "Pixel Print House",
]
CITIES = [
    "Mumbai", "Delhi", "Bengaluru", "Chennai", "Hyderabad", "Pune",
    "Kolkata", "Ahmedabad", "Jaipur", "Lucknow", "Kochi", "Indore",
    "Chandigarh", "Bhopal", "Surat", "Nagpur", "Coimbatore", "Guwahati",
]
BANKS = [
    "SBI", "HDFC Bank", "ICICI Bank", "Axis Bank", "Kotak Mahindra Bank",
    "Punjab National Bank", "Bank of Baroda", "Canara Bank", "Yes Bank",
    "IndusInd Bank", "IDFC First Bank", "Union Bank of India",
    "Federal Bank", "Bank of India",
]
UPI_APPS = ["Google Pay", "PhonePe", "Paytm", "BHIM", "Amazon Pay UPI", "CRED"]
WALLETS = ["Paytm Wallet", "PhonePe Wallet", "Amazon Pay", "Mobikwik", "Freecharge"]
METHODS = ["UPI", "credit card", "debit card", "netbanking", "wallet", "RuPay card", "Visa card", "Mastercard"]
PAYMENT_ERROR_CODES = [
    "GATEWAY_ERROR", "PAYMENT_DECLINED", "INSUFFICIENT_FUNDS", "AUTHENTICATION_FAILED",
    "INVALID_OTP", "CARD_EXPIRED", "INVALID_VPA", "UPI_COLLECT_EXPIRED",
    "UPI_LIMIT_EXCEEDED", "BANK_UNAVAILABLE", "PAYMENT_TIMEOUT", "RISK_DECLINED",
]
ERROR_CODES = [
    "GATEWAY_ERROR", "BAD_REQUEST_ERROR", "SERVER_ERROR", "PAYMENT_DECLINED",
    "INSUFFICIENT_FUNDS", "AUTHENTICATION_FAILED", "INVALID_OTP",
    "OTP_ATTEMPTS_EXCEEDED", "CARD_EXPIRED", "INVALID_VPA",
    "UPI_COLLECT_EXPIRED", "UPI_LIMIT_EXCEEDED", "BANK_UNAVAILABLE",
    "PAYMENT_TIMEOUT", "RISK_DECLINED", "AUTHENTICATION_ERROR",
    "RATE_LIMIT_EXCEEDED", "REFUND_AMOUNT_EXCEEDED", "INSUFFICIENT_BALANCE",
]
WEBHOOK_EVENTS = [
    "payment.captured", "payment.failed", "payment.authorized", "refund.processed",
    "refund.failed", "settlement.processed", "dispute.created", "dispute.lost",
    "subscription.charged", "subscription.halted", "payout.reversed",
    "payment_link.paid", "order.paid",
]
PRODUCTS = [
    "saree", "phone cover", "yoga mat", "school fees", "gym membership",
    "annual subscription", "laptop bag", "organic honey", "bus ticket",
    "online course", "birthday cake", "ayurvedic oil", "printer cartridge",
    "hotel booking", "grocery order", "tuition fee", "pet food", "bridal lehenga",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]
AMOUNTS = [99, 149, 199, 249, 299, 349, 399, 499, 599, 799, 999, 1199, 1499,
           1999, 2499, 2999, 3499, 4999, 5999, 7499, 8999, 9999, 12500, 14999,
           18000, 24999, 35000, 49999, 75000, 99999, 125000, 250000]

# ----------------------------------------------------------------------------
# Slot fillers
# ----------------------------------------------------------------------------


def rid(rng: random.Random, prefix: str) -> str:
    """Return a prefixed ID: 6-14 characters after the prefix, mostly 14."""
    n = 14 if rng.random() < 0.7 else rng.randint(6, 13)
    if rng.random() < 0.25:
        # Older style, upper-case IDs such as pay_ABC123.
        body = "".join(rng.choice(ALNUM[:26] + ALNUM[52:]) for _ in range(n))
    else:
        body = "".join(rng.choice(ALNUM) for _ in range(n))
    return f"{prefix}{body}"


def inr(amount: int) -> str:
    """Format an integer rupee amount in the Indian grouping style."""
    s = str(amount)
    if len(s) <= 3:
        return s
    head, tail = s[:-3], s[-3:]
    groups = []
    while len(head) > 2:
        groups.insert(0, head[-2:])
        head = head[:-2]
    if head:
        groups.insert(0, head)
    return ",".join(groups) + "," + tail


def money(rng: random.Random) -> str:
    a = rng.choice(AMOUNTS)
    style = rng.random()
    if style < 0.45:
        return f"₹{inr(a)}"
    if style < 0.7:
        return f"Rs {inr(a)}"
    if style < 0.85:
        return f"INR {a}"
    return f"{a} rupees"


def date(rng: random.Random) -> str:
    d = rng.randint(1, 28)
    m = rng.choice(MONTHS)
    return rng.choice([f"{d} {m}", f"{m} {d}", f"{d}/{MONTHS.index(m) + 1}", f"{d} {m[:3]}"])


def time_(rng: random.Random) -> str:
    h = rng.randint(1, 12)
    mm = rng.choice(["00", "05", "15", "23", "30", "42", "50"])
    return f"{h}:{mm} {rng.choice(['AM', 'PM'])}"


def utr(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") for _ in range(12))


def fill(rng: random.Random, template: str) -> str:
    """Replace {slot} markers in a template with random values."""
    first = rng.choice(FIRST_NAMES)
    slots = {
        "name": first,
        "cust": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
        "biz": rng.choice(BUSINESSES),
        "city": rng.choice(CITIES),
        "bank": rng.choice(BANKS),
        "app": rng.choice(UPI_APPS),
        "wallet": rng.choice(WALLETS),
        "method": rng.choice(METHODS),
        "code": rng.choice(ERROR_CODES),
        "pcode": rng.choice(PAYMENT_ERROR_CODES),
        "acct4": f"{rng.randint(0, 9999):04d}",
        "event": rng.choice(WEBHOOK_EVENTS),
        "product": rng.choice(PRODUCTS),
        "day": rng.choice(DAYS),
        "date": date(rng),
        "time": time_(rng),
        "utr": utr(rng),
        "n": str(rng.randint(2, 9)),
        "big": str(rng.choice([12, 15, 20, 25, 30, 40, 50, 60, 80, 120])),
        "mid": f"MID{rng.randint(1, 8):03d}",
    }
    out = template
    # Each occurrence of {pay}, {amt}, ... gets a fresh value.
    for key, prefix in [("pay", "pay_"), ("rfnd", "rfnd_"), ("disp", "disp_"),
                        ("setl", "setl_"), ("order", "order_"), ("pout", "pout_"),
                        ("plink", "plink_"), ("sub", "sub_"), ("inv", "inv_")]:
        while "{" + key + "}" in out:
            out = out.replace("{" + key + "}", rid(rng, prefix), 1)
    while "{amt}" in out:
        out = out.replace("{amt}", money(rng), 1)
    for k, v in slots.items():
        out = out.replace("{" + k + "}", v)
    return out


# ----------------------------------------------------------------------------
# Short search queries (3-12 words)
# ----------------------------------------------------------------------------

QUERY_TEMPLATES = [
    "refund status {pay}", "settlement not received", "settlement delayed {n} days",
    "what does {code} mean", "{code} error fix", "how to fix {code}",
    "upi payment failed", "upi limit per day", "upi collect request expired",
    "refund timeline for {method}", "how long does {method} refund take",
    "partial refund on {method} payment", "cancel refund", "refund not received by customer",
    "T+2 settlement meaning", "minimum settlement amount", "settlement on hold why",
    "instant settlement fee", "gst on fees", "gst invoice download",
    "kyc documents for proprietorship", "kyc rejected name mismatch", "re-kyc due",
    "chargeback response deadline", "dispute evidence proof of delivery",
    "enable international cards", "usd to inr conversion rate", "multi currency payments",
    "webhook signature verification failed", "{event} webhook not received",
    "webhook retries how long", "api rate limit 429", "regenerate api key",
    "live key not working", "test card numbers", "test upi id success",
    "payment link expired", "create payment link whatsapp", "subscription halted",
    "upi autopay limit", "payout reversed", "payout fee imps", "otp not received card payment",
    "3d secure failed", "risk hold on account", "account suspended", "activation pending",
    "pci dss compliance", "store card details", "android upi apps not showing",
    "ios sdk upi intent", "pay_ id format", "find payment by utr", "rrn search dashboard",
    "money debited payment failed", "late authorization captured", "capture authorized payment",
    "netbanking {bank} down", "{bank} netbanking failure", "{wallet} payment failed",
    "{app} payment pending", "fee for amex card", "corporate card charges", "emi pricing",
    "reconciliation report columns", "settlement utr missing", "negative balance recovery",
    "support ticket priority P1", "escalate support ticket", "grievance officer contact",
    "refund {rfnd} stuck pending", "dispute {disp} status", "settlement {setl} details",
    "payment {pay} failed with {pcode}", "why {method} payment declined", "customer charged twice",
    "refund window 180 days", "convenience fee on upi", "tds on gateway fees",
    "change settlement bank account", "first settlement T+7", "bank holiday settlement",
    "second saturday settlement", "instant refund charges", "customer invoice gst",
    "order already paid error", "amount in paise", "idempotency key refund",
    "{biz} settlement query", "merchant {mid} payments", "payment {pay} status",
    "refund for {amt} upi payment", "chargeback on {amt} order", "settlement of {amt} missing",
    "paise me amount kaise bheje", "refund kab tak aayega", "settlement kab aayega",
    "upi fail kyu ho raha", "kyc reject ho gaya", "payment pending dikha raha",
    "how do I download settlement report", "how to accept payments without website",
    "how can I lower card fees", "can I refund to another account",
    "why was fee charged on upi", "is gst charged on refund", "when does chargeback money come back",
    "how to add gstin to account", "who can generate live keys", "how to test webhooks locally",
]

QUERY_PREFIX = ["", "", "", "how to ", "why ", "help ", "urgent ", "query: "]
QUERY_SUFFIX = ["", "", "", "", " today", " for customer", " in dashboard", " via api", " please", " asap"]


def make_queries(rng: random.Random, n: int) -> list[str]:
    out = []
    while len(out) < n:
        t = fill(rng, rng.choice(QUERY_TEMPLATES))
        t = (rng.choice(QUERY_PREFIX) + t + rng.choice(QUERY_SUFFIX)).strip()
        if rng.random() < 0.2:
            t = t[0].upper() + t[1:]
        if rng.random() < 0.15:
            t += "?"
        words = len(t.split())
        if 3 <= words <= 12:
            out.append(t)
    return out


# ----------------------------------------------------------------------------
# Merchant support messages (1-4 sentences)
# ----------------------------------------------------------------------------

OPENERS = [
    "Hi,", "Hello team,", "Hi Paysetu support,", "Dear team,", "Namaste,",
    "Hello,", "Hi there,", "Good morning,", "", "", "",
]
MSG_CORE = [
    "My customer {cust} paid {amt} by {method} on {date} but I have not received the settlement yet. Payment ID is {pay}.",
    "Payment {pay} shows {pcode} but the customer says money was debited from their {bank} account.",
    "I refunded {amt} for order {order} on {date} and the customer still has not got it. Refund ID {rfnd}.",
    "We are seeing a lot of {pcode} errors since {time} today, almost every {method} payment is failing.",
    "A chargeback {disp} was raised for {amt} on a {product} that was delivered. What documents should I upload?",
    "Settlement {setl} was marked processed but there is no credit in our {bank} account. UTR given is {utr}.",
    "Our webhook for {event} stopped arriving after we changed servers, and the dashboard shows timeouts.",
    "The signature check on {event} fails every time even though we use the webhook secret.",
    "Why was {amt} deducted from my settlement on {date}? I don't see any refund for that day.",
    "I want to give a partial refund of {amt} on {pay} because one {product} was out of stock.",
    "My KYC was rejected saying name mismatch between PAN and bank account, but both say {biz}.",
    "Customer tried {n} times with UPI and each time got UPI_COLLECT_EXPIRED. Is something wrong on your side?",
    "We have a festival sale on {date} and expect {big} times our normal volume. Please don't put our settlements on hold.",
    "The API returned RATE_LIMIT_EXCEEDED while we were creating refunds in bulk. What is the limit?",
    "Our {app} payments are showing pending for more than an hour. Order {order}, amount {amt}.",
    "Customer from {city} says OTP never came for her {bank} card while paying {amt}.",
    "Payout {pout} of {amt} to our vendor got reversed. What does reversed mean and is the fee refunded?",
    "Can you increase the UPI limit for my customer? He wants to pay {amt} in one go.",
    "I accidentally shared my live key secret in a support email. What should I do now?",
    "Payment link {plink} shows expired but the customer paid {amt} just before that.",
    "Subscription {sub} went to halted after the customer's card failed. How do I restart it?",
    "GST invoice for last month shows IGST but we are registered in Karnataka.",
    "The settlement report total does not match the bank credit of {amt} on {date}.",
    "International customer from Dubai is getting declined. Do we need to enable something?",
    "Test payments are showing captured but no money came to my account.",
    "Our Android app is not showing {app} in the UPI options after we updated to Android 14.",
    "Payment {pay} for {amt} was captured on {date} at {time}, settlement still not received after {n} days.",
    "I got BAD_REQUEST_ERROR saying refund window has expired for {pay}. The order was {n} months ago.",
    "Dispute {disp} was marked lost although we uploaded proof of delivery. Can we appeal?",
    "Merchant ID {mid}. Our account shows activated_kyc_pending, when will settlements start?",
    "Same customer got charged twice for {amt}, payment IDs {pay} and {pay}.",
    "Amount {amt} was debited from the customer's {wallet} but order shows failed with {pcode}.",
    "Ticket raised {n} days ago about settlement delay, no reply yet. Please escalate.",
    "Is the fee returned when I refund {pay}? We were charged {amt} on a cancelled order.",
]
HINGLISH = [
    "Bhai mera settlement {n} din se nahi aaya, payment ID {pay} hai, amount {amt}.",
    "Customer ka paisa kat gaya par payment failed dikha raha hai, {pcode} aaya. Kya karein?",
    "Refund {rfnd} kiya tha {date} ko, abhi tak customer ko nahi mila. Kitne din lagenge?",
    "UPI se payment bar bar fail ho raha hai, {app} pe pending dikhata hai phir expire.",
    "Mera KYC reject ho gaya, bol rahe hai bank proof clear nahi hai. Dobara kaise upload karu?",
    "Settlement hold pe kyun hai? Humne koi galat kaam nahi kiya, {biz} ka account hai.",
    "Sir {amt} ka chargeback aaya hai {disp}, product deliver ho gaya tha. Proof kya bhejna hai?",
    "Payment link ka paisa aaya ya nahi kaise check karu? Link {plink} hai.",
    "Customer bol raha hai OTP nahi aa raha {bank} card pe, payment {amt} ka tha.",
    "Instant settlement ka option grey kyu hai? Mujhe aaj hi paisa chahiye.",
    "Webhook nahi aa raha {event} ka, server pe 200 return kar rahe hai phir bhi.",
    "GST invoice mein GSTIN galat hai, sahi kaise karwaye?",
    "Humara {mid} account hai, payment {pay} captured hai par settle nahi hua. Jaldi check karo please.",
    "Partial refund karna hai {amt} ka, dashboard mein option nahi dikh raha.",
    "Payout {pout} reverse ho gaya, vendor ko paisa nahi mila. Fee wapas milegi kya?",
    "Live key kaam nahi kar rahi, AUTHENTICATION_ERROR aa raha hai.",
]
FOLLOWUPS = [
    "Please check urgently.", "This is affecting our business.", "Thanks in advance.",
    "Kindly help.", "Customer is very upset.", "Please share the UTR.",
    "We need this resolved today.", "Let me know if you need any documents.",
    "Our merchant ID is {mid}.", "The amount was {amt}.", "Order ID is {order}.",
    "Jaldi reply karo please.", "Bahut urgent hai.", "Shukriya.",
    "Can you also tell me the expected date?", "Is this a problem at the bank's end?",
    "", "", "",
]
SIGNOFFS = ["", "", "", " - {name}", " Regards, {name} from {biz}", " Thanks, {name}", " {name}, {city}"]


def make_messages(rng: random.Random, n: int) -> list[str]:
    out = []
    while len(out) < n:
        if rng.random() < 0.22:
            core = rng.choice(HINGLISH)
        else:
            core = rng.choice(MSG_CORE)
        parts = [rng.choice(OPENERS), core]
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            parts.append(rng.choice(FOLLOWUPS))
        text = " ".join(p for p in parts if p) + rng.choice(SIGNOFFS)
        text = fill(rng, text).strip()
        text = re.sub(r"\s+", " ", text)
        out.append(text)
    return out


# ----------------------------------------------------------------------------
# Knowledge-base paragraphs (40-200 words), taken from data/kb
# ----------------------------------------------------------------------------


def clean_md(text: str) -> str:
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"\*\*([^*]*)\*\*", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def table_to_sentences(lines: list[str]) -> str:
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    rows = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]
    if len(rows) < 2:
        return ""
    header, body = rows[0], rows[1:]
    sents = []
    for r in body:
        pairs = [f"{h}: {c}" for h, c in zip(header, r) if c]
        sents.append("; ".join(pairs) + ".")
    return " ".join(sents)


def kb_sections() -> list[tuple[str, str, list[str]]]:
    """Return (doc title, section heading, blocks) for every section in data/kb."""
    sections = []
    for path in sorted(KB_DIR.glob("*.md")):
        title = ""
        heading = ""
        blocks: list[str] = []
        cur: list[str] = []
        table: list[str] = []

        def flush_para():
            if cur:
                blocks.append(clean_md(" ".join(cur)))
                cur.clear()
            if table:
                t = table_to_sentences(table)
                if t:
                    blocks.append(clean_md(t))
                table.clear()

        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                flush_para()
                if blocks:
                    sections.append((title, heading, blocks))
                blocks = []
                level = len(line) - len(line.lstrip("#"))
                text = line.lstrip("#").strip()
                if level == 1:
                    title = text
                    heading = text
                else:
                    heading = text
            elif line.startswith("|"):
                if cur:
                    blocks.append(clean_md(" ".join(cur)))
                    cur.clear()
                table.append(line)
            elif not line.strip():
                flush_para()
            else:
                if table:
                    flush_para()
                item = re.sub(r"^\s*(?:[-*]|\d+\.)\s+", "", line)
                cur.append(item)
        flush_para()
        if blocks:
            sections.append((title, heading, blocks))
    return sections


def wc(s: str) -> int:
    return len(s.split())


def make_kb_paragraphs(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    """Return (paragraphs of 40-200 words, long texts of 250-400 words) from the KB."""
    sections = kb_sections()
    paras: list[str] = []
    # 1. Whole sections and single blocks that already fit.
    for title, heading, blocks in sections:
        whole = f"{heading}. " + " ".join(blocks) if heading != title else " ".join(blocks)
        if 40 <= wc(whole) <= 200:
            paras.append(whole)
        for b in blocks:
            if 40 <= wc(b) <= 200:
                paras.append(b)
            elif wc(b) > 200:
                sents = re.split(r"(?<=[.!?])\s+", b)
                chunk: list[str] = []
                for s in sents:
                    chunk.append(s)
                    if wc(" ".join(chunk)) >= rng.randint(60, 150):
                        paras.append(" ".join(chunk))
                        chunk = []
                if chunk and wc(" ".join(chunk)) >= 40:
                    paras.append(" ".join(chunk))
    # 2. Sentence windows of varied length, prefixed with the section context.
    all_sents = []
    for title, heading, blocks in sections:
        sents = []
        for b in blocks:
            sents.extend(s for s in re.split(r"(?<=[.!?])\s+", b) if s)
        all_sents.append((title, heading, sents))
    attempts = 0
    while len(paras) < n * 3 and attempts < 50000:
        attempts += 1
        title, heading, sents = rng.choice(all_sents)
        if len(sents) < 2:
            continue
        start = rng.randrange(len(sents))
        target = rng.choice([45, 55, 70, 90, 120, 160, 190])
        chunk = []
        i = start
        while i < len(sents) and wc(" ".join(chunk)) < target:
            chunk.append(sents[i])
            i += 1
        text = " ".join(chunk)
        if rng.random() < 0.5:
            text = f"{title}: {heading}. {text}" if heading != title else f"{title}. {text}"
        if 40 <= wc(text) <= 200:
            paras.append(text)
    paras = dedupe(paras)
    rng.shuffle(paras)
    # 3. Long texts: consecutive sections of one document, 250-400 words.
    by_doc: dict[str, list[str]] = {}
    for title, heading, blocks in sections:
        by_doc.setdefault(title, []).append(
            (f"{heading}. " if heading != title else "") + " ".join(blocks))
    longs = []
    docs = list(by_doc.items())
    for _ in range(4000):
        if len(longs) >= N_LONG // 2:
            break
        title, secs = rng.choice(docs)
        start = rng.randrange(len(secs))
        text = f"{title}. "
        for s in secs[start:]:
            if wc(text + s) > 400:
                break
            text += s + " "
        text = text.strip()
        if 250 <= wc(text) <= 400:
            longs.append(text)
    return paras[:n], dedupe(longs)


# ----------------------------------------------------------------------------
# Long merchant emails and agent notes (250-400 words)
# ----------------------------------------------------------------------------

LONG_PARTS = [
    "We run {biz} in {city} and have been using Paysetu for about {n} years for our online orders.",
    "On {date} a customer named {cust} placed an order for a {product} worth {amt} and paid by {method}.",
    "The payment ID on our side is {pay} and the order ID is {order}.",
    "The dashboard showed the payment as captured at {time}, and we dispatched the order the next morning through our usual courier.",
    "However, when we checked our {bank} statement on {day}, the settlement for that day was smaller than expected by roughly {amt}.",
    "Our accountant compared the settlement report with the bank credit and could not find this payment in any settlement so far.",
    "There is no dispute shown for it and we have not created any refund, so we do not understand why it is missing.",
    "We also noticed that a few UPI payments from the same day failed with {pcode}, and two customers called us saying money was debited.",
    "One of them shared a UTR {utr} from their {app} app, which we searched in the dashboard but it shows a failed payment {pay}.",
    "We told the customer that the bank will reverse the amount in five working days, but she is not convinced and wants written confirmation.",
    "Separately, last week we raised a ticket about the GST invoice, which still shows IGST even though our GSTIN is registered in Karnataka.",
    "Our settlements were also delayed once in {date} because of a re-KYC reminder we had missed; that was resolved after we uploaded the documents.",
    "We are planning a festival sale on {date} and expect around {big} times our usual daily volume, so we want to avoid any risk hold during that week.",
    "Could you please check the settlement status of {pay}, confirm whether it is on hold, and share the settlement ID and UTR once it is processed?",
    "If any document is needed from our side, such as invoices or courier receipts, we can share them the same day.",
    "We have been a loyal customer and this delay is affecting our cash flow, as we pay our suppliers every Friday.",
    "Please treat this as high priority, and escalate to the settlement team if needed.",
    "Also let us know if we should enable instant settlements, and what the fee would be for about {amt} a day.",
    "We have already tried refreshing the report and downloading it again for the last {n} days, but the numbers remain the same.",
    "Our developer also checked the webhook logs and found that the {event} event was delivered for most payments, but not for this one.",
]
AGENT_NOTES = [
    "Agent note: merchant {mid} ({biz}) reported that payment {pay} for {amt} was captured on {date} but not settled.",
    "Checked the payment: status captured, method {method}, no dispute, no refund, no risk flag on the payment itself.",
    "Settlement status shows pending; the account had a KYC hold from the periodic re-KYC that was approved yesterday.",
    "Explained that held amounts are released within one working day after approval and will be included in the next T+2 cycle.",
    "Merchant also asked about a failed payment with {pcode}; confirmed the customer was not charged and any debit will be auto-reversed.",
    "Shared the refund timelines: UPI 1-3 working days, cards and netbanking 5-7 working days, wallets 1-2 working days.",
    "Merchant wanted to know the fee on instant settlements; told them 0.25% plus GST on demand and 0.30% for scheduled.",
    "Raised internal P2 with the settlement team for confirmation and promised an update within 2 hours.",
    "Follow-up: settlement {setl} processed, UTR {utr}, credited to the {bank} account ending in {acct4}.",
    "Merchant confirmed receipt and asked to close the ticket. No further action needed.",
    "Customer {cust} had also written to the merchant about a refund {rfnd}; it was processed on {date} with an ARN available on the refund page.",
    "Advised the merchant to rely on webhooks instead of the redirect for marking orders paid, since UPI payments can complete late.",
]


def make_long_texts(rng: random.Random, n: int) -> list[str]:
    out = []
    while len(out) < n:
        pool = LONG_PARTS if rng.random() < 0.6 else AGENT_NOTES + LONG_PARTS[:6]
        parts = rng.sample(pool, len(pool))
        text = ""
        for p in parts:
            cand = (text + " " + fill(rng, p)).strip()
            if wc(cand) > 400:
                break
            text = cand
            if wc(text) >= rng.randint(260, 390):
                break
        if len(pool) == len(LONG_PARTS) and wc(text) < 250:
            continue
        if 250 <= wc(text) <= 400:
            out.append(text)
    return out


# ----------------------------------------------------------------------------
# Latency queries (12-16 words)
# ----------------------------------------------------------------------------

LAT_TEMPLATES = [
    "why has the settlement for payment {pay} of {amt} not reached my bank account yet",
    "customer paid {amt} through {app} on {date} but the order still shows payment failed",
    "how many working days does a {method} refund take to reach the customer's account",
    "what does the error code {code} mean and how should I fix it for my customers",
    "my KYC was rejected because of a name mismatch, how do I upload the documents again",
    "how do I respond to chargeback {disp} before the seven day deadline ends this week",
    "is GST charged on the full transaction amount or only on the gateway fee you deduct",
    "what is the maximum amount a customer can pay through UPI in a single transaction today",
    "our webhook endpoint is not receiving {event} events since yesterday, how do we debug it",
    "can I issue a partial refund of {amt} on payment {pay} for one returned item",
    "how do I enable international cards so that customers from {city} abroad can pay in dollars",
    "the API keeps returning RATE_LIMIT_EXCEEDED when we create refunds in bulk, what is the limit",
    "please explain the T+2 settlement cycle and what happens on bank holidays and second Saturdays",
    "settlement for {mid} is on hold, what documents do I need to get it released quickly",
    "customer says the OTP from {bank} never arrived while paying {amt} for a {product}",
    "mera settlement {n} din se nahi aaya, payment ID {pay} hai, please jaldi check karo",
    "refund {rfnd} was processed on {date} but the customer has still not received the money",
    "what is the fee for instant settlements and how much can I settle in one request",
    "how do I verify the checkout signature using the order ID and payment ID on my server",
    "payout {pout} to our vendor got reversed, will the payout fee be refunded to our balance",
    "our Android app does not show {app} in UPI options, what should we add to the manifest",
    "how do I download the settlement reconciliation report and match it with the UTR in my statement",
    "payment link {plink} expired before the customer could pay, can I reactivate it or create another",
    "subscription {sub} is halted after failed card charges, how do I resume the recurring payments",
    "customer ka {amt} kat gaya par payment failed dikha raha hai, paisa kab wapas aayega",
    "what happens to an authorized payment that we forget to capture within five days of payment",
    "which test card and test UPI ID should I use to simulate a failed payment in test mode",
    "I shared my live API key secret by mistake, how do I rotate it without any downtime",
    "what is the difference between a retrieval request, a chargeback and pre-arbitration for card disputes",
    "how long does it take to get support for a P1 issue and how can I escalate it",
]


def make_latency_queries(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    attempts = 0
    while len(out) < n and attempts < 100000:
        attempts += 1
        t = fill(rng, rng.choice(LAT_TEMPLATES))
        if 12 <= wc(t) <= 16 and t not in out:
            out.append(t)
    return out


# ----------------------------------------------------------------------------


def dedupe(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for it in items:
        seen.setdefault(it, None)
    return list(seen)


def main() -> None:
    rng = random.Random(SEED)
    queries = make_queries(rng, N_QUERIES)
    messages = make_messages(rng, N_MESSAGES)
    kb_paras, kb_longs = make_kb_paragraphs(rng, N_KB_PARAS)
    longs = kb_longs + make_long_texts(rng, N_LONG - len(kb_longs))
    texts = dedupe(queries + messages + kb_paras + longs)
    rng.shuffle(texts)
    with open(HERE / "texts.jsonl", "w", encoding="utf-8") as fh:
        for t in texts:
            fh.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    lat = make_latency_queries(random.Random(SEED + 1), N_LATENCY_QUERIES)
    with open(HERE / "queries.jsonl", "w", encoding="utf-8") as fh:
        for q in lat:
            fh.write(json.dumps({"query": q}, ensure_ascii=False) + "\n")
    words = [wc(t) for t in texts]
    print(f"texts: {len(texts)} lines, mean {sum(words) / len(words):.1f} words, "
          f"min {min(words)}, max {max(words)}; kb paragraphs {len(kb_paras)}, "
          f"long {len(longs)}; latency queries: {len(lat)}")


if __name__ == "__main__":
    main()
