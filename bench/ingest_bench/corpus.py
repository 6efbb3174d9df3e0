"""The pre-signed corpus: single text-message notifications, each with a unique wamid.

One request per line: `sha256=<hex>` TAB the compact JSON body (msgspec never writes a
newline or a tab into it). The file is cached under bench/out/, named by its size, a digest of
the app secret and the format version, and written whole before it is renamed into place.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ingest_bench.progress import log_progress
from zapstream.signing import sign

FORMAT_VERSION = 1
CUSTOMERS = 1000
PHONE_NUMBER_ID = "100000000000001"
DISPLAY_PHONE_NUMBER = "15550009999"
TEXTS = (
    "Hi! Are you open on Sunday?",
    "I need to change the delivery address of my order",
    "Where is my package? It was due yesterday",
    "Can I pay by card when it arrives?",
    "Thanks, that's all",
    "Do you have the blue one in size M?",
)
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken")

_encoder = msgspec.json.Encoder()


def customer_phone(customer: int) -> str:
    return f"1555{customer:07d}"


def wamid_for(number: int, *, customer: int, run: str) -> str:
    """A wamid shaped like Meta's (base64 of the sender and a 20-character id), unique per
    (number, run)."""
    unique = f"3A{run[:3].upper():>3}{number:015X}".encode("ascii")
    raw = b"\x1c\x18\x0b" + customer_phone(customer).encode("ascii") + b"\x15\x02\x00\x12\x18\x14"
    return "wamid." + base64.b64encode(raw + unique + b"\x00").decode("ascii")


def build_body(number: int, *, customer: int, timestamp: int, run: str = "web") -> bytes:
    """One notification carrying one text message, as Meta sends it (compact JSON)."""
    phone = customer_phone(customer)
    name = f"{FIRST_NAMES[customer % len(FIRST_NAMES)]} {customer:04d}"
    message = {
        "from": phone,
        "id": wamid_for(number, customer=customer, run=run),
        "timestamp": str(timestamp),
        "text": {"body": TEXTS[number % len(TEXTS)]},
        "type": "text",
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY_PHONE_NUMBER,
                     "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": name}, "wa_id": phone}],
        "messages": [message],
    }
    notification = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "200000000000002", "changes": [{"value": value, "field": "messages"}]}],
    }
    return _encoder.encode(notification)


def corpus_path(out: Path, size: int, secret: str) -> Path:
    digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()[:12]
    return out / f"corpus-v{FORMAT_VERSION}-{size}-{digest}.tsv"


def write_corpus(path: Path, size: int, secret: str) -> None:
    """`size` signed requests from CUSTOMERS customers, a second apart, ending about now."""
    start = int(time.time()) - size // CUSTOMERS
    partial = path.with_suffix(f".partial-{os.getpid()}")
    with partial.open("wb") as file:
        lines = []
        for number in range(size):
            body = build_body(number, customer=number % CUSTOMERS,
                              timestamp=start + number // CUSTOMERS)
            lines.append(sign(body, secret).encode("ascii") + b"\t" + body + b"\n")
            if len(lines) == 10_000:
                file.writelines(lines)
                lines.clear()
        file.writelines(lines)
    partial.rename(path)


def ensure_corpus(out: Path, size: int, secret: str) -> Path:
    """The cached corpus of `size` requests signed with `secret`, written first if missing."""
    path = corpus_path(out, size, secret)
    if path.is_file():
        log_progress(f"corpus: reusing {path.name}")
        return path
    log_progress(f"corpus: signing {size:,} requests into {path.name}")
    started = time.perf_counter()
    write_corpus(path, size, secret)
    elapsed = time.perf_counter() - started
    log_progress(f"corpus: {path.stat().st_size / 1e6:.0f} MB in {elapsed:.1f} s")
    return path


def read_bodies(path: Path, limit: int) -> Iterator[bytes]:
    """The first `limit` bodies of a corpus file."""
    with path.open("rb") as file:
        for number, line in enumerate(file):
            if number >= limit:
                return
            yield line.rstrip(b"\n").split(b"\t", 1)[1]
