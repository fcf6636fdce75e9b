"""What a reconcile pass reports: its outcome folded into the `Status` /health shows, and
its log lines.

A failed pass is logged once when its cause changes, not at each retry; one that works
again after failures says so once. `utc_now` is the clock every status and record is
stamped with. The functions return the next `Status`; the reconciler publishes it whole.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from .diff import Plan
from .folder import TransientError
from .model import Status
from .store import StorageFault, StoreError

# The reconcile's lines, under the logger name operators' alerts know.
log = logging.getLogger("droq_registry.reconcile")


def utc_now() -> str:
    """Now, as the registry stamps it: UTC, milliseconds, `Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def failed(status: Status, exc: Exception, revision: int) -> Status:
    """`status` after a failed pass; logs one line when the cause changes, not each time."""
    update: dict[str, Any] = {
        "reconciles": {**status.reconciles, "failed": status.reconciles["failed"] + 1},
        "failed_passes": status.failed_passes + 1,
        "failing_since": status.failing_since or utc_now(),
    }
    known = isinstance(exc, (StoreError, OSError, TransientError))
    message = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, StorageFault):
        update.update(database="failing", database_error=message)
    if message == status.last_error:
        log.debug("reconcile failed again (%s)", message)
    elif known:
        log.error("reconcile failed: %s; serving revision %d and trying again", message, revision)
    else:  # not a fault of the disk or the files: a bug, worth its traceback once
        log.exception("reconcile failed: %s; serving revision %d and trying again", message, revision)
    return replace(status, last_error=message, **update)


def succeeded(status: Status, revision: int) -> Status:
    """`status` after a pass that worked (say so once if passes failed before it)."""
    if status.last_error is not None:
        log.info(
            "reconcile works again after %d failed pass(es) since %s; serving revision %d",
            status.failed_passes, status.failing_since, revision,
        )
    return replace(status, last_error=None, failed_passes=0, failing_since=None, database="ok", database_error=None)


def done(status: Status, plan: Plan, now: str, duration_ms: float) -> Status:
    """`status` once a pass has planned `plan` (and committed it, when it is not empty)."""
    kind = "changed" if plan else "unchanged"
    return replace(
        status,
        ready=True,
        last_reconcile_at=now,
        last_duration_ms=round(duration_ms, 3),
        reconciles={**status.reconciles, kind: status.reconciles[kind] + 1},
    )


def log_commit(plan: Plan, revision: int, read: int, duration_ms: float) -> None:
    """The lines of a committed pass: what changed, and every file in error."""
    counts = plan.counts
    log.info(
        "reconciled revision %d: added=%d updated=%d removed=%d errors=%d files_read=%d duration_ms=%.1f",
        revision, counts["added"], counts["updated"], counts["removed"], counts["errors"], read, duration_ms,
    )
    for source in plan.sources_put.values():
        if source.state != "ok":
            log.warning("%s: %s", source.path, source.error)
