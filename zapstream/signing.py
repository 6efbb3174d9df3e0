"""The one HMAC signature zapstream reads and writes: `sha256=` and the lowercase hex
HMAC-SHA256 of the body's bytes (Meta's X-Hub-Signature-256; the handoff webhook's too)."""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    return PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
