"""Plain values that travel from a node file to an HTTP answer. Imports nothing from the package.

What a node file is (`Node`, `Component`), what the registry keeps of it (`Source`, `FileSig`),
what reading it gave (`Parsed`, `Failed`, `Gone`), what is served for a node id (`Served`),
the change log's records (`Change`), and what the reconciler reports (`Status`, `Result`).
All frozen: a value handed from the writer to the event loop is never changed under it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

SourceState = Literal["ok", "error", "conflict"]
ChangeKind = Literal["added", "updated", "removed", "error", "conflict", "recovered", "source"]

#: What an epoch (`store.epoch_of`) and a content hash (`snapshot.content_hash_of`) look
#: like: the API checks and documents them with these.
EPOCH_PATTERN = "[A-Za-z0-9_-]{1,32}"
CONTENT_HASH_PATTERN = "[0-9a-f]{32}"

#: NODE fields every answer carries, in the order they are written.
CORE_FIELDS = (
    "node_id",
    "name",
    "description",
    "source_code_location",
    "docker_image",
    "deployment_location",
    "api_url",
    "ip_address",
    "status",
    "priority",
)


@dataclass(frozen=True, slots=True)
class Component:
    """One component class a node handles. `info` holds the object form's other keys."""

    component_class: str
    module_path: str
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Node:
    """A validated node file with its defaults filled in. Components are sorted by class."""

    node_id: str
    name: str
    description: str = ""
    source_code_location: str | None = None
    docker_image: str | None = None
    deployment_location: str = "local"
    api_url: str | None = None
    ip_address: str | None = None
    status: str = "active"
    priority: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    components: tuple[Component, ...] = ()


@dataclass(frozen=True, slots=True)
class FileSig:
    """What `stat` says of a file; equal signatures mean "probably unchanged".

    `kind` is "file" for a regular file, else what the name is instead ("directory",
    "fifo", "socket", "device"), or "unresolved" when it cannot even be stat'ed through
    (a symbolic link loop, a link into a folder the service may not search): then the
    numbers are the link's own, and the name is looked at again on every pass.
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int
    kind: str = "file"


@dataclass(frozen=True, slots=True)
class Source:
    """What the registry knows of one node file (a path relative to the assets folder).

    `packed` is the file's last good node (None if it never parsed): its canonical bytes
    (`nodebytes.encode`) as `nodebytes.pack` compresses them; it is the node served when this
    file owns `node_id`, also while the file is in error. `fingerprint` identifies that
    node (equal fingerprints, equal nodes); `content_hash` is the hash of the file's bytes
    (and its components file's), which says whether the file must be parsed again.
    """

    path: str
    state: SourceState
    node_id: str | None
    packed: bytes | None
    content_hash: str | None
    error: str | None = None
    deps: tuple[str, ...] = ()
    applied_at: str | None = None
    updated_at: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One record of the change log."""

    revision: int
    kind: ChangeKind
    node_id: str | None
    source: str | None
    at: str


@dataclass(frozen=True, slots=True)
class Parsed:
    """The file was read and is a valid node."""

    node_id: str
    packed: bytes  # nodebytes.pack of the canonical bytes
    fingerprint: str  # nodebytes.fingerprint: the node's identity
    content_hash: str
    deps: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Failed:
    """The file was read (or could not be) and is refused; `error` says why."""

    error: str
    content_hash: str | None = None
    deps: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Gone:
    """The file is no longer there."""


Outcome = Parsed | Failed | Gone


@dataclass(frozen=True, slots=True)
class Served:
    """What the store serves for one node id (by fingerprint), and which file it came from."""

    owner: str
    fingerprint: str


@dataclass(frozen=True)
class Status:
    """What /health reports of the reconciler: an immutable value, replaced whole on the
    writer thread (`Reconciler.note`, a pass's outcome from `health.py`), so a reader never
    sees half of one change."""

    ready: bool = False
    folder_present: bool | None = None
    last_reconcile_at: str | None = None
    last_duration_ms: float | None = None
    #: Why the latest pass failed (None once one succeeds again).
    last_error: str | None = None
    reconciles: Mapping[str, int] = field(default_factory=lambda: {"changed": 0, "unchanged": 0, "failed": 0})
    #: The database: waiting (another registry writes it), opening, ok or failing.
    database: str = "opening"
    database_error: str | None = None
    #: Passes failed in a row, and when the first of them failed.
    failed_passes: int = 0
    failing_since: str | None = None


@dataclass(frozen=True)
class Result:
    """What one pass did."""

    revision: int
    changed: bool
    counts: dict[str, int]
    duration_ms: float
    read: int
