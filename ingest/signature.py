"""sign() and verify_signature(): Meta's X-Hub-Signature-256 over the raw body bytes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence


class SignatureError(ValueError):
    """The body's signature is missing or matches none of the app secrets."""


_PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The header value Meta sends: `sha256=` and the lowercase hex HMAC-SHA256 of `body`."""
    return _PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secrets: Sequence[str]) -> None:
    """Return when `header` signs `body` with one of `secrets` (two during a rotation).

    Hashes the bytes as received (re-serialised JSON would not match) and compares bytes in
    constant time, so a forged non-ASCII header is a SignatureError, not a TypeError.
    """
    if not header:
        raise SignatureError("missing X-Hub-Signature-256")
    if not header.startswith(_PREFIX) or not header.isascii():
        raise SignatureError("X-Hub-Signature-256 is not `sha256=<hex>`")
    given = header[len(_PREFIX) :].strip().lower().encode("ascii")
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
        # No early exit: each secret costs the same whether or not an earlier one matched.
        matched |= hmac.compare_digest(expected.encode("ascii"), given)
    if not matched:
        raise SignatureError("signature does not match")
