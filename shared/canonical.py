"""Canonical JSON (RFC 8785, the JSON Canonicalization Scheme).

Everything Coact hashes or signs is first turned into these bytes, so the agent, the
relay and ``coact audit verify`` compute identical digests from the same data.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from coact.shared.errors import CanonicalizationError


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 encoding of ``value``."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalizationError(str(exc)) from exc
    except TypeError as exc:
        raise CanonicalizationError(f"not JSON-serialisable: {exc}") from exc


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``."""
    return sha256_hex(canonical_json(value))
