"""A node's bytes: its canonical bytes, the packed bytes kept of it, and its fingerprint.

*Canonical* bytes are a node encoded one way on every machine (equal nodes, equal bytes);
*packed* bytes are those compressed, as the registry keeps a last good node between uses
(`Source.packed`); a *fingerprint* is the hash of the canonical bytes, a node's identity.
Pure: no file system, no clock.
"""

from __future__ import annotations

import hashlib
import zlib

import orjson

from .model import CORE_FIELDS, Component, Node


def encode(node: Node) -> bytes:
    """The canonical bytes of a node: equal nodes give equal bytes, on every machine."""
    return orjson.dumps(
        {
            **{name: getattr(node, name) for name in CORE_FIELDS},
            "extra": node.extra,
            "components": [[c.component_class, c.module_path, c.info] for c in node.components],
        },
        option=orjson.OPT_SORT_KEYS,
    )


def decode(canonical: bytes) -> Node:
    """The inverse of `encode` (for bytes this module wrote; not validated again)."""
    data = orjson.loads(canonical)
    components = tuple(Component(c, p, i) for c, p, i in data.pop("components"))
    return Node(components=components, **data)


def pack(canonical: bytes) -> bytes:
    """How the registry keeps a canonical node between uses: compressed (JSON shrinks
    several times), so a thousand large last-good nodes cost megabytes, not hundreds."""
    return zlib.compress(canonical, 1)


def unpack(packed: bytes) -> Node:
    """The node that `pack` kept."""
    return decode(zlib.decompress(packed))


def fingerprint(canonical: bytes) -> str:
    """The identity of a node, from its canonical bytes: equal nodes, equal fingerprints."""
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()
