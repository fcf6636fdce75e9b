"""Plain values that travel from a node file to an HTTP answer. Imports nothing from the package."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

SourceState = Literal["ok", "error", "conflict"]
ChangeKind = Literal["added", "updated", "removed", "error", "conflict", "recovered", "source"]

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

    `doc` is the file's last good node (None if it never parsed), as `nodefile.pack` keeps
    it; it is the node served when this file owns `node_id`, also while the file is in
    error. `digest` identifies that node: equal digests, equal nodes.
    """

    path: str
    state: SourceState
    node_id: str | None
    doc: bytes | None
    content_hash: str | None
    error: str | None = None
    deps: tuple[str, ...] = ()
    applied_at: str | None = None
    updated_at: str | None = None
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One record of the change log."""

    revision: int
    kind: ChangeKind
    node_id: str | None
    source: str | None
    at: str
