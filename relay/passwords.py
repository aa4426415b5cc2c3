"""User passwords: argon2id hashing and a simple strength rule.

Hashes are argon2id in the PHC string form (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``),
so the parameters travel with each hash and can be raised later: after a successful
login, :meth:`PasswordHasher.needs_rehash` tells the caller to store a fresh hash.

Passwords are NFKC-normalised before hashing, as NIST SP 800-63B asks, so that the
same password typed on two keyboards (composed vs. decomposed accents, full-width
digits) still matches.
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

MIN_PASSWORD_CHARS = 12
# An upper bound keeps one login request from costing unbounded work and memory.
MAX_PASSWORD_CHARS = 1024


@dataclass(frozen=True)
class PasswordParams:
    """argon2id cost parameters. The defaults follow OWASP's argon2id guidance;
    tests pass cheap ones (e.g. ``PasswordParams(1, 8, 1)``)."""

    time_cost: int = 3
    memory_cost_kib: int = 65536
    parallelism: int = 4


def _normalize(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


class PasswordHasher:
    """argon2id hashing with a constant-cost answer for unknown users."""

    def __init__(self, params: PasswordParams) -> None:
        self._params = params
        self._hasher = argon2.PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_cost_kib,
            parallelism=params.parallelism,
            hash_len=32,
            salt_len=16,
            type=argon2.Type.ID,
        )
        # Hashed once up front with the same parameters as real hashes, so that
        # dummy_verify costs what a real verify costs; computing it lazily would make
        # the first unknown-user login measurably slower than the rest.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))

    @property
    def params(self) -> PasswordParams:
        return self._params

    def hash(self, password: str) -> str:
        return self._hasher.hash(_normalize(password))

    def verify(self, stored_hash: str, password: str) -> bool:
        """True if ``password`` matches ``stored_hash``.

        A mismatch and a malformed or unsupported stored hash both give False: callers
        answer "wrong username or password" either way and must not crash on a bad row.
        """
        try:
            return self._hasher.verify(stored_hash, _normalize(password))
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True if ``stored_hash`` was not made with this hasher's type and parameters.

        A malformed hash also needs rehashing (it can never be current); in practice
        it will not verify, so there is nothing to rehash from.
        """
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    def dummy_verify(self, password: str) -> None:
        """Spend the time of a real verify, for logins naming an unknown user.

        Without it a login for a user who does not exist returns in microseconds and a
        real one in tens of milliseconds, which lets anyone enumerate user names.
        """
        self.verify(self._dummy_hash, password)


def check_password_strength(password: str) -> str | None:
    """None if ``password`` is acceptable, else a message to show the user.

    NIST SP 800-63B style: a length floor and ceiling, no composition rules (they push
    people toward ``Password1!``). A single repeated character is refused because it
    is the one long password every guesser tries first.
    """
    normalized = _normalize(password)
    length = len(normalized)
    if length < MIN_PASSWORD_CHARS:
        return f"password must be at least {MIN_PASSWORD_CHARS} characters (got {length})"
    if length > MAX_PASSWORD_CHARS:
        return f"password must be at most {MAX_PASSWORD_CHARS} characters (got {length})"
    if len(set(normalized)) == 1:
        return "password must not be one character repeated"
    return None
