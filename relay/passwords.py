"""User passwords: argon2id hashing and a simple strength rule.

Hashes are argon2id in the PHC string form (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``),
so the parameters travel with each hash and can be raised later: after a successful
login, :meth:`PasswordHasher.needs_rehash` tells the caller to store a fresh hash.

Passwords are NFKC-normalised before hashing, as NIST SP 800-63B asks, so that the
same password typed on two keyboards (composed vs. decomposed accents, full-width
digits) still matches.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from coact.relay.errors import HashingBusy

T = TypeVar("T")
Monotonic = Callable[[], float]

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


class PasswordPool:
    """Password hashing off the event loop, in its own bounded pool.

    argon2 with production parameters costs ~64 MiB and tens of milliseconds of CPU a
    hash. Run in the default thread pool, a flood of unauthenticated signups queued
    ahead of every database read the relay makes (``asyncio.to_thread``), and other
    clients' ``GET /me`` went from milliseconds to seconds. Here at most ``workers``
    hashes run at once (bounding memory too) and at most ``queue`` more wait; beyond
    that a call raises :class:`HashingBusy` (503 with Retry-After) at once, so the
    flood costs its senders, not everybody else.
    """

    def __init__(self, hasher: PasswordHasher, *, workers: int, queue: int, monotonic: Monotonic) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("workers must be at least 1 and queue at least 0")
        self._hasher = hasher
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._workers = workers
        self._capacity = workers + queue
        self._monotonic = monotonic
        self._in_flight = 0
        # A running estimate of one hash's duration, for Retry-After.
        self._seconds_per_hash = 0.1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def retry_after(self) -> int:
        """Whole seconds until the work queued now is likely done; at least 1."""
        return max(1, math.ceil(self._in_flight / self._workers * self._seconds_per_hash))

    async def _run(self, work: Callable[[], T]) -> T:
        if self._in_flight >= self._capacity:
            raise HashingBusy(self.retry_after())
        self._in_flight += 1
        try:
            started = self._monotonic()
            result = await asyncio.get_running_loop().run_in_executor(self._executor, work)
            self._seconds_per_hash = 0.8 * self._seconds_per_hash + 0.2 * (self._monotonic() - started)
            return result
        finally:
            self._in_flight -= 1

    async def hash(self, password: str) -> str:
        return await self._run(lambda: self._hasher.hash(password))

    async def verify(self, stored_hash: str, password: str) -> bool:
        return await self._run(lambda: self._hasher.verify(stored_hash, password))

    async def dummy_verify(self, password: str) -> None:
        await self._run(lambda: self._hasher.dummy_verify(password))

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.needs_rehash(stored_hash)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
