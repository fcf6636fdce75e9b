"""Runtime settings, read once from the environment into a frozen object.

`Settings.from_env()` is the only place in the package that reads `os.environ`; every
other module receives the values it needs. A bad value raises `SettingsError` with one
line that names the variable, which the CLI prints instead of a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError("expected a port number between 1 and 65535")
    return port


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError("expected a number of seconds, 0 or more")
    return number


def _positive_seconds(value: str) -> float:
    number = float(value)
    if not 0 < number < float("inf"):
        raise ValueError("expected a number of seconds, more than 0")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("expected a whole number, 1 or more")
    return number


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return lowered

    return parse


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told from outside. Paths are kept as given."""

    host: str = "0.0.0.0"
    port: int = 8002
    log_level: str = "info"
    log_format: str = "text"
    reload: bool = True
    db_path: Path = Path("registry.db")
    assets_dir: Path = Path("assets/nodes")
    resync_seconds: float = 60.0
    changes_keep: int = 10_000
    # How long the watcher waits for a batch of events to go quiet (milliseconds).
    watch_step_ms: int = 10
    watch_debounce_ms: int = 400
    schema_path: Path = field(default_factory=lambda: default_schema_path())
    #: When set, /api/... and /metrics need `Authorization: Bearer <token>`.
    api_token: str | None = field(default=None, repr=False)
    # Limits on clients (enforced by `protocol.LimitedProtocol`; `server.py` passes them): time to send a whole request head, idle time of a
    # kept-alive connection, time a client may take no part of an answer, size of a
    # request head, open connections (None: derived from the file-descriptor limit, see
    # server.connection_limit).
    head_timeout_seconds: float = 10.0
    keepalive_timeout_seconds: float = 5.0
    send_timeout_seconds: float = 30.0
    max_head_bytes: int = 64 * 1024
    max_connections: int | None = None
    #: Unsent bytes an event stream may have queued before it is cut (it resumes with
    #: Last-Event-ID): what a stuck reader can make the service hold.
    follower_buffer_bytes: int = 256 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from `environ` (default `os.environ`); raise SettingsError."""
        env = os.environ if environ is None else environ
        defaults = cls()

        def get(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return parse(raw)
            except ValueError as exc:
                reason = str(exc) if "expected" in str(exc) or "must" in str(exc) else "invalid value"
                raise SettingsError(f"{name}={raw!r}: {reason}") from None

        return cls(
            host=get("HOST", _text, defaults.host),
            port=get("PORT", _port, defaults.port),
            log_level=get("LOG_LEVEL", _choice(LOG_LEVELS), defaults.log_level),
            log_format=get("LOG_FORMAT", _choice(LOG_FORMATS), defaults.log_format),
            reload=get("RELOAD", _bool, defaults.reload),
            db_path=Path(get("REGISTRY_DB_PATH", _text, str(defaults.db_path))),
            assets_dir=Path(get("REGISTRY_ASSETS_DIR", _text, str(defaults.assets_dir))),
            resync_seconds=get("REGISTRY_RESYNC_SECONDS", _non_negative_float, defaults.resync_seconds),
            changes_keep=get("REGISTRY_CHANGES_KEEP", _positive_int, defaults.changes_keep),
            watch_step_ms=get("REGISTRY_WATCH_STEP_MS", _positive_int, defaults.watch_step_ms),
            watch_debounce_ms=get("REGISTRY_WATCH_DEBOUNCE_MS", _positive_int, defaults.watch_debounce_ms),
            schema_path=Path(get("REGISTRY_SCHEMA_PATH", _text, str(defaults.schema_path))),
            api_token=_token(env),
            head_timeout_seconds=get("REGISTRY_HEAD_TIMEOUT_SECONDS", _positive_seconds, defaults.head_timeout_seconds),
            keepalive_timeout_seconds=get(
                "REGISTRY_KEEPALIVE_TIMEOUT_SECONDS", _positive_seconds, defaults.keepalive_timeout_seconds
            ),
            send_timeout_seconds=get("REGISTRY_SEND_TIMEOUT_SECONDS", _positive_seconds, defaults.send_timeout_seconds),
            max_head_bytes=get("REGISTRY_MAX_HEAD_BYTES", _positive_int, defaults.max_head_bytes),
            max_connections=get("REGISTRY_MAX_CONNECTIONS", _positive_int, defaults.max_connections),
            follower_buffer_bytes=get(
                "REGISTRY_FOLLOWER_BUFFER_BYTES", _positive_int, defaults.follower_buffer_bytes
            ),
        )

    @property
    def db_file(self) -> Path:
        """The database file itself: REGISTRY_DB_PATH with symbolic links followed, as SQLite
        follows them (its `-wal` and `-shm` files go beside the file, not the link). The writer
        lock and every check are on it, so two paths to one file take one lock."""
        return Path(os.path.realpath(self.db_path))

    def with_(self, **changes: object) -> Settings:
        """A copy with some values replaced (the tests make their settings with it)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def log_format_from_env(environ: Mapping[str, str] | None = None) -> str:
    """LOG_FORMAT alone, to report a bad setting in the format asked for ("text" if it is bad too)."""
    raw = (os.environ if environ is None else environ).get("LOG_FORMAT", "").strip().lower()
    return raw if raw in LOG_FORMATS else "text"


def _token(env: Mapping[str, str]) -> str | None:
    """REGISTRY_API_TOKEN, or the contents of REGISTRY_API_TOKEN_FILE (a mounted secret)."""
    token = env.get("REGISTRY_API_TOKEN") or None
    path = env.get("REGISTRY_API_TOKEN_FILE") or None
    if token is not None and path is not None:
        raise SettingsError("set REGISTRY_API_TOKEN or REGISTRY_API_TOKEN_FILE, not both")
    if path is not None:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"REGISTRY_API_TOKEN_FILE={path!r}: cannot read it: {exc}") from None
        if not token:
            raise SettingsError(f"REGISTRY_API_TOKEN_FILE={path!r}: the file is empty")
    if token is not None and (token != token.strip() or not token.isprintable()):
        raise SettingsError("REGISTRY_API_TOKEN: must be printable, without surrounding spaces")
    return token


def default_schema_path() -> Path:
    """The node-file JSON Schema shipped in the package (a link to `config/` in a checkout)."""
    return Path(__file__).resolve().parent / "node.schema.json"
