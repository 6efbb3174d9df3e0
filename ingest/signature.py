"""verify_signature(): Meta's X-Hub-Signature-256 over the raw body bytes (sign() is in
zapstream/signing.py, shared with the stand-in and the handoff webhook)."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from zapstream.signing import PREFIX, sign


class SignatureError(ValueError):
    """The body's signature is missing or matches none of the app secrets."""


def verify_signature(body: bytes, header: str | None, secrets: Sequence[str]) -> None:
    """Return when `header` signs `body` with one of `secrets` (two during a rotation).

    Hashes the bytes as received (re-serialised JSON would not match) and compares bytes in
    constant time, so a forged non-ASCII header is a SignatureError, not a TypeError.
    """
    if not header:
        raise SignatureError("missing X-Hub-Signature-256")
    if not header.startswith(PREFIX) or not header.isascii():
        raise SignatureError("X-Hub-Signature-256 is not `sha256=<hex>`")
    given = header[len(PREFIX) :].strip().lower().encode("ascii")
    matched = False
    for secret in secrets:
        expected = sign(body, secret)[len(PREFIX) :]
        # No early exit: each secret costs the same whether or not an earlier one matched.
        matched |= hmac.compare_digest(expected.encode("ascii"), given)
    if not matched:
        raise SignatureError("signature does not match")
