"""The client's public values: its options, its status, and the state changes it reports."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

#: The state changes the client logs (once each) and passes to `on_state_change`.
StateChangeKind = Literal["synced", "stale", "replica_switched", "relisted"]


@dataclass(frozen=True, slots=True)
class StateChange:
    """One change of the client's state.

    - `synced`: the client holds a complete, current state (first time, or again after
      being stale).
    - `stale`: the registry could not be reached (or the state came from the cache file);
      lookups answer from the last known state.
    - `replica_switched`: the state now comes from another replica (`previous_url` -> `url`).
    - `relisted`: the client listed the registry again instead of following its feed
      (`detail` says why, and how many nodes differed).
    """

    kind: StateChangeKind
    url: str | None
    revision: int
    epoch: str | None
    detail: str
    previous_url: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """Where the client's state comes from and how current it is.

    `age_seconds` is the time since a registry answer last confirmed the state (while
    following, a long-poll answers at least every `poll_wait` seconds); `stale` says the
    last attempt to reach the registry failed or the state was loaded from the cache file
    and not confirmed yet. `url` is the replica the state came from.
    """

    synced: bool
    stale: bool
    url: str | None
    epoch: str | None
    revision: int | None
    content_hash: str | None
    age_seconds: float | None
    last_error: str | None
    nodes: int
    from_cache: bool


@dataclass(frozen=True, slots=True)
class Options:
    """Everything the client is configured with (see `RegistryClient` for each meaning)."""

    urls: tuple[str, ...]
    token: str | None = None
    poll_wait: float = 15.0
    timeout: float = 5.0
    resync_interval: float = 300.0
    backoff_initial: float = 0.25
    backoff_max: float = 15.0
    failure_ttl: float = 30.0
    startup_timeout: float = 10.0
    cache_path: Path | None = None
    cache_interval: float = 1.0
    concurrency: int = 8
    on_state_change: Callable[[StateChange], None] | None = None

    @classmethod
    def make(cls, urls: str | Sequence[str], **options: object) -> Options:
        """Checked options: a bad value raises ValueError naming it."""
        given = [urls] if isinstance(urls, str) else list(urls)
        if not given:
            raise ValueError("urls: give the registry's base URL, or a list of replicas")
        cleaned = tuple(_base_url(u) for u in given)
        cache_path = options.pop("cache_path", None)
        made = cls(
            urls=cleaned,
            cache_path=None if cache_path is None else Path(cache_path),  # type: ignore[arg-type]
            **options,  # type: ignore[arg-type]
        )
        made._check()
        return made

    def _check(self) -> None:
        if self.token is not None and (not self.token or any(c in self.token for c in "\r\n")):
            raise ValueError("token: must be a non-empty string on one line")
        if not 0 < self.poll_wait <= 60:
            raise ValueError(f"poll_wait: seconds from above 0 to 60 (the registry's limit), got {self.poll_wait}")
        for name in ("timeout", "backoff_initial", "backoff_max", "cache_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be above 0 seconds, got {getattr(self, name)}")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max: must not be below backoff_initial")
        for name in ("resync_interval", "failure_ttl", "startup_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be 0 or more seconds, got {getattr(self, name)}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency: must be 1 or more, got {self.concurrency}")


def _base_url(url: object) -> str:
    if not isinstance(url, str):
        raise TypeError(f"urls: {url!r} is not a string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"urls: {url!r} is not an http(s) base URL such as http://registry:8002")
    return url.rstrip("/")
