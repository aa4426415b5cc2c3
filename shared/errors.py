"""Errors raised by ``coact.shared``.

    CoactError
    ├── CanonicalizationError   a value has no canonical JSON form (NaN, huge int, ...)
    ├── SignatureError          an Ed25519 signature or key does not verify / parse
    ├── ChainError              an audit chain does not verify
    │   ├── ChainGapError       the first seq is not the one expected
    │   └── ChainForkError      a seq that is already stored arrives with another hash
    └── ProtocolError           a wire message is malformed or of an unknown type/version
"""

from __future__ import annotations


class CoactError(Exception):
    """Base of every error Coact raises on purpose."""


class CanonicalizationError(CoactError):
    """The value cannot be encoded as RFC 8785 canonical JSON."""


class SignatureError(CoactError):
    """A signature, public key or private key is malformed or does not verify."""


class ChainError(CoactError):
    """An audit chain does not verify. ``seq`` names the first bad record, if known."""

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class ChainGapError(ChainError):
    """A batch does not start where the stored chain ends."""

    def __init__(self, message: str, *, expected_seq: int) -> None:
        super().__init__(message, seq=expected_seq)
        self.expected_seq = expected_seq


class ChainForkError(ChainError):
    """A record re-uses a stored seq with a different hash: a security event."""


class ProtocolError(CoactError):
    """A wire message that does not parse or is not allowed here."""
