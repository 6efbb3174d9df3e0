"""verify_signature(): HMAC-SHA256 over the raw bytes, constant time, two secrets."""

from __future__ import annotations

import pytest

from ingest.signature import SignatureError, verify_signature
from tests.notifications import fixture_bytes
from zapstream.signing import sign

BODY = fixture_bytes("text_burst_2.json")


def test_matches_a_known_vector() -> None:
    # printf '{}' | openssl dgst -sha256 -hmac s3cret
    assert (
        sign(b"{}", "s3cret")
        == "sha256=adbde1ce40c89c14215687d5d762a47df6dfaefcfad61e2e86718ffc8498571b"
    )


def test_accepts_its_own_signature() -> None:
    verify_signature(BODY, sign(BODY, "k"), ["k"])


def test_accepts_either_secret_during_rotation() -> None:
    verify_signature(BODY, sign(BODY, "new"), ["old", "new"])
    verify_signature(BODY, sign(BODY, "old"), ["old", "new"])


@pytest.mark.parametrize(
    "header",
    [None, "", "sha256=", "sha1=abcdef", "sha256=" + "0" * 64, "sha256=zz", "sha256=é" * 3],
)
def test_rejects_missing_or_malformed_or_wrong(header: str | None) -> None:
    with pytest.raises(SignatureError):
        verify_signature(BODY, header, ["k"])


def test_rejects_the_wrong_secret() -> None:
    with pytest.raises(SignatureError):
        verify_signature(BODY, sign(BODY, "other"), ["k"])


def test_rejects_a_body_changed_by_one_byte_after_signing() -> None:
    header = sign(BODY, "k")
    changed = bytearray(BODY)
    changed[len(changed) // 2] ^= 0x01
    with pytest.raises(SignatureError):
        verify_signature(bytes(changed), header, ["k"])


def test_upper_case_hex_is_accepted() -> None:
    header = sign(BODY, "k")
    verify_signature(BODY, "sha256=" + header[7:].upper(), ["k"])
