"""Login throttling: a sliding-window failure counter per key, with an injected clock.

A pure core with no I/O: :class:`FailureWindow` remembers, per key (an account's
email, a client address), the times of its recent failures, and says how long a key
must wait once it has ``limit`` failures inside ``window_s`` seconds. The relay keeps
one per relay process in memory (:class:`LoginLimits`); several relays behind a load
balancer each count on their own, so the effective limit is per relay — the design's
shared bus will carry it later.

Memory is bounded twice: a key keeps at most ``limit`` timestamps, and at most
``max_keys`` keys are tracked (the least recently failed key is forgotten first), so
a flood of distinct names cannot grow the relay without limit.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

Monotonic = Callable[[], float]


class FailureWindow:
    """At most ``limit`` failures per key in any ``window_s``-second window."""

    def __init__(self, limit: int, window_s: float, clock: Monotonic, max_keys: int = 100_000) -> None:
        if limit < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("limit, window_s and max_keys must be positive")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it may try now."""
        now = self._clock()
        times = self._recent(key, now)
        if times is None or len(times) < self.limit:
            return 0.0
        # The oldest failure in the window leaves it first.
        return max(0.0, times[0] + self.window_s - now)

    def fail(self, key: str) -> None:
        now = self._clock()
        times = self._recent(key, now)
        if times is None:
            times = deque(maxlen=self.limit)
            self._failures[key] = times
            while len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        times.append(now)

    def forgive(self, key: str) -> None:
        """Take back the latest failure of ``key`` (an attempt counted before it was judged)."""
        times = self._failures.get(key)
        if times:
            times.pop()
            if not times:
                del self._failures[key]

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._failures)


@dataclass
class LoginLimits:
    """The relay's two login throttles: per account (email) and per client address."""

    accounts: FailureWindow
    addresses: FailureWindow

    @classmethod
    def create(cls, per_account: int, per_address: int, window_s: float, clock: Monotonic) -> LoginLimits:
        return cls(FailureWindow(per_account, window_s, clock), FailureWindow(per_address, window_s, clock))

    def retry_after(self, account: str, address: str) -> int:
        """Whole seconds to wait (rounded up, for ``Retry-After``); 0 if allowed."""
        wait = max(self.accounts.retry_after(account), self.addresses.retry_after(address))
        return math.ceil(wait)

    def attempt(self, account: str, address: str) -> None:
        """Count an attempt as a failure *before* judging it, so that many parallel
        guesses cannot all pass the check while the password hashes are computed."""
        self.accounts.fail(account)
        self.addresses.fail(address)

    def withdraw(self, account: str, address: str) -> None:
        """Take back an attempt that was never judged (the hashing pool was full)."""
        self.accounts.forgive(account)
        self.addresses.forgive(address)

    def succeeded(self, account: str, address: str) -> None:
        """A good login clears the account's failures and takes back its own attempt
        from the address — but not the failures others sent from it (NAT, proxy)."""
        self.accounts.reset(account)
        self.addresses.forgive(address)


@dataclass
class SignupLimits:
    """The relay's signup throttles: per client address and for the whole relay.

    Every signup counts, accepted or not: each costs a full password hash, and the
    answer does not say whether an account was made (decision 66). A global window
    is safe here, unlike for logins: legitimate signups are rare, and a flood that
    fills it blocks new organisations for a while, never an existing user's login.
    """

    addresses: FailureWindow
    relay: FailureWindow

    RELAY_KEY = "*"

    @classmethod
    def create(cls, per_address: int, per_relay: int, window_s: float, clock: Monotonic) -> SignupLimits:
        return cls(FailureWindow(per_address, window_s, clock), FailureWindow(per_relay, window_s, clock, max_keys=1))

    def retry_after(self, address: str) -> int:
        wait = max(self.addresses.retry_after(address), self.relay.retry_after(self.RELAY_KEY))
        return math.ceil(wait)

    def attempt(self, address: str) -> None:
        self.addresses.fail(address)
        self.relay.fail(self.RELAY_KEY)

    def withdraw(self, address: str) -> None:
        """Take back an attempt that cost no hash (the hashing pool was full)."""
        self.addresses.forgive(address)
        self.relay.forgive(self.RELAY_KEY)


class TokenBuckets:
    """A token bucket per key: ``burst`` at most, refilled at ``rate`` a second.

    For quotas on authenticated work (task creation per user and per org), where the
    steady rate matters and a sliding window of timestamps would cost memory per
    request. A key whose bucket is full again is forgotten, so memory follows the
    keys active in the last ``burst / rate`` seconds, and at most ``max_keys``.
    """

    def __init__(self, rate: float, burst: int, clock: Monotonic, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate, burst and max_keys must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` has a token; 0 if it has one now."""
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def take(self, key: str) -> None:
        now = self._clock()
        tokens = self._tokens(key, now) - 1
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        # Forget buckets that have refilled: the oldest first, a few per call.
        for _ in range(2):
            oldest = next(iter(self._buckets))
            if oldest == key or self._tokens(oldest, now) < self.burst:
                break
            del self._buckets[oldest]

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class TaskQuotas:
    """Task creation quotas per user and per org (token buckets)."""

    users: TokenBuckets
    orgs: TokenBuckets

    def retry_after(self, user_id: str, org_id: str) -> int:
        return math.ceil(max(self.users.retry_after(user_id), self.orgs.retry_after(org_id)))

    def take(self, user_id: str, org_id: str) -> None:
        self.users.take(user_id)
        self.orgs.take(org_id)
