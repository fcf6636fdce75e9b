"""SIGTERM and SIGINT are kept from the service's first moment, before uvicorn listens for them.

In a container the service is PID 1, and the kernel drops a signal sent to a namespace's
PID 1 that has no handler for it. Until uvicorn installs its own handlers (after the
imports, the settings, the store's checks and the app are made: a second or more on a
busy machine), a `podman stop` or `docker stop` would be lost: the service would start
and serve, and be killed at the end of the grace period (exit code 137). So the command
records those signals from its first line (`record_stop_signals`), the server gives up
before starting when one came (`stop_requested`), and hands one that came while uvicorn
was taking over to uvicorn (`server.RegistryServer.capture_signals`).
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def record_stop_signals() -> None:
    """From now on, SIGTERM and SIGINT are recorded (and only recorded) until uvicorn takes them."""
    for sig in SIGNALS:
        signal.signal(sig, _record)


def stop_requested() -> int | None:
    """The first stop signal recorded, or None."""
    return _received[0] if _received else None
