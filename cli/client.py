"""How the admin CLI talks to a relay: a small synchronous JSON client, the saved
login profiles, and a session that keeps the access token fresh.

Errors::

    click.ClickException
    └── CliError          exit 1: relay refused, relay unreachable, not logged in, …

Every failure a person can cause or fix becomes a :class:`CliError` with one clear
sentence; nothing here prints a traceback for an expected condition.

Profiles live in ``$XDG_CONFIG_HOME/coact/profiles.json`` (``~/.config`` by
default), readable by the owner only, and are rewritten atomically. Refreshing
rotates the refresh token and the relay revokes a whole session when a spent
refresh token is used again, so two ``coact`` commands refreshing at once would log
each other out: the refresh runs under an exclusive lock on the profiles file and
re-reads the profile first, taking over a pair another process just saved.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

try:  # POSIX; on Windows refreshes are simply not serialised between processes.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

API = "/api/v1"
# Refresh a little before the relay would refuse the token, to absorb clock skew
# and the time a request spends in flight.
EXPIRY_MARGIN_S = 5.0


class CliError(click.ClickException):
    """An expected failure, reported as one line on stderr with exit code 1."""

    exit_code = 1


class RelayRefused(CliError):
    """The relay answered with an error status (its problem ``detail`` is the message)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        sep = f" — {detail}" if detail and detail != title else ""
        super().__init__(f"relay refused: {status} {title}{sep}")
        self.status = status
        self.title = title
        self.detail = detail


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"relay URL must look like http://host:port, got {url!r}")
    return url


# -- HTTP -------------------------------------------------------------------------------


class Http:
    """JSON over HTTP to one relay. Returns ``(status, body)``; raises only when the
    relay cannot be reached at all."""

    def __init__(self, base_url: str, timeout: float = 30) -> None:
        self.base_url = normalize_url(base_url)
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> tuple[int, Any]:
        url = self.base_url + path
        if query:
            pairs = {k: str(v) for k, v in query.items() if v is not None}
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        headers = {"Accept": "application/json", "User-Agent": "coact-cli"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                status, payload = answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(
                f"cannot reach the relay at {self.base_url}: is `coact relay serve` running? ({reason})"
            ) from exc
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return status, parsed


def refused(status: int, body: Any) -> RelayRefused:
    """Turn an error answer (problem+json or anything else) into a RelayRefused."""
    if isinstance(body, dict):
        title = str(body.get("title") or "")
        detail = str(body.get("detail") or "")
    else:
        title, detail = "", str(body or "").strip()[:300]
    if not title:
        title = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
                 409: "Conflict", 500: "Internal error", 503: "Service unavailable"}.get(status, "Error")
    return RelayRefused(status, title, detail)


# -- profiles ---------------------------------------------------------------------------


@dataclass
class Profile:
    """What ``coact login`` keeps: the relay and a token pair. ``expires_at`` is epoch s."""

    relay: str
    access_token: str | None = None
    refresh_token: str | None = None
    expires_at: float | None = None
    email: str | None = None

    @property
    def logged_in(self) -> bool:
        return bool(self.access_token and self.refresh_token)

    def access_expired(self, now: float | None = None) -> bool:
        if self.expires_at is None:
            return False
        return (now if now is not None else time.time()) >= self.expires_at - EXPIRY_MARGIN_S


def config_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "coact"


class ProfileStore:
    """The profiles file: ``{"profiles": {name: Profile}}``, mode 0600 in a 0700 dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {"profiles": {}}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CliError(f"{self.path} is not valid JSON ({exc}): fix or delete it") from exc
        if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
            raise CliError(f"{self.path} is not a coact profiles file: fix or delete it")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        fd, tmp = tempfile.mkstemp(prefix=".profiles.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, name: str) -> Profile | None:
        raw = self._read()["profiles"].get(name)
        if not isinstance(raw, dict) or not isinstance(raw.get("relay"), str):
            return None
        fields: dict[str, Any] = {
            k: raw.get(k) for k in ("relay", "access_token", "refresh_token", "expires_at", "email")
        }
        return Profile(**fields)

    def save(self, name: str, profile: Profile) -> None:
        with self.locked():
            self.put(name, profile)

    def put(self, name: str, profile: Profile) -> None:
        """Store ``profile`` under ``name``; the caller holds :meth:`locked`."""
        data = self._read()
        data["profiles"][name] = asdict(profile)
        self._write(data)

    def forget_tokens(self, name: str) -> None:
        with self.locked():
            data = self._read()
            raw = data["profiles"].get(name)
            if isinstance(raw, dict):
                for key in ("access_token", "refresh_token", "expires_at"):
                    raw[key] = None
                self._write(data)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes (re-entrant use is not needed and not supported)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def token_profile(pair: Mapping[str, Any], relay: str, email: str | None) -> Profile:
    return Profile(
        relay=relay,
        access_token=str(pair["access_token"]),
        refresh_token=str(pair["refresh_token"]),
        expires_at=time.time() + float(pair.get("expires_in") or 0),
        email=email,
    )


# -- authenticated session --------------------------------------------------------------


class Session:
    """Authenticated calls to one relay.

    With a fixed token (``COACT_TOKEN``) nothing is refreshed. With a profile, an
    access token that has expired, or that the relay answers 401 to, is replaced
    using the refresh token and the new pair is saved at once.
    """

    def __init__(self, http: Http, *, token: str | None = None,
                 store: ProfileStore | None = None, profile_name: str | None = None,
                 profile: Profile | None = None) -> None:
        self.http = http
        self._token = token
        self._store = store
        self._profile_name = profile_name
        self._profile = profile

    @property
    def relay(self) -> str:
        return self.http.base_url

    @property
    def profile(self) -> Profile | None:
        return self._profile

    def ensure_fresh(self) -> None:
        """Refresh the profile's access token now if it has expired."""
        self._access_token()

    def _access_token(self) -> str | None:
        if self._token is not None:
            return self._token
        if self._profile is None:
            return None
        if self._profile.access_expired():
            self._refresh(self._profile.access_token)
        return self._profile.access_token

    def _refresh(self, stale: str | None) -> None:
        """Replace the access token ``stale``, unless another process already did."""
        assert self._store is not None
        assert self._profile_name is not None
        with self._store.locked():
            current = self._store.get(self._profile_name)
            if current is not None and current.logged_in and current.access_token != stale \
                    and not current.access_expired():
                self._profile = current
                return
            if current is None or not current.refresh_token:
                raise CliError(f"not logged in (profile {self._profile_name!r}): run `coact login`")
            status, body = self.http.request("POST", f"{API}/auth/refresh",
                                             {"refresh_token": current.refresh_token})
            if status == 401:
                raise CliError(
                    f"your session has ended ({refused(status, body).detail or 'refresh refused'}): "
                    f"run `coact login --relay {current.relay}` again"
                )
            if status != 200 or not isinstance(body, dict):
                raise refused(status, body)
            fresh = token_profile(body, current.relay, current.email)
            self._store.put(self._profile_name, fresh)
            self._profile = fresh

    def request(self, method: str, path: str, body: Any = None,
                query: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        token = self._access_token()
        status, answer = self.http.request(method, path, body, token=token, query=query)
        if status == 401 and self._token is None and self._profile is not None:
            self._refresh(token)
            status, answer = self.http.request(method, path, body, token=self._profile.access_token, query=query)
        return status, answer

    def call(self, method: str, path: str, body: Any = None,
             query: Mapping[str, Any] | None = None, *, ok: tuple[int, ...] = (200, 201, 204)) -> Any:
        """``request`` that raises :class:`RelayRefused` unless the status is in ``ok``."""
        status, answer = self.request(method, API + path, body, query)
        if status not in ok:
            if status == 401 and self._token is not None:
                raise CliError(f"the relay refused COACT_TOKEN: {refused(status, answer).detail}")
            raise refused(status, answer)
        return answer

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, {} if body is None else body)

    def pages(self, path: str, *, page_size: int = 500, limit: int | None = None,
              **query: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list, following ``next_cursor``."""
        cursor = None
        seen = 0
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - seen))
            page = self.get(path, **query, limit=size, cursor=cursor)
            for item in page["items"]:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return
