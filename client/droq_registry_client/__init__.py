"""A client for executors of the Droq registry.

    from droq_registry_client import RegistryClient

    with RegistryClient("http://registry:8002") as registry:
        answer = registry.node_for("Multiply")      # from memory: no network I/O
        print(answer["node"]["api_url"], answer["module_path"])

Lookups answer from a copy of the registry's state held in memory, kept current by a
background follower of the registry's change feed, and keep answering from the last known
state while no replica can be reached.
"""

from .client import AsyncRegistryClient, RegistryClient
from .errors import ComponentNotFound, NodeNotFound, RegistryError, RegistryUnavailable
from .model import StateChange, StateChangeKind, Status

__version__ = "1.0.0"

__all__ = [
    "AsyncRegistryClient",
    "ComponentNotFound",
    "NodeNotFound",
    "RegistryClient",
    "RegistryError",
    "RegistryUnavailable",
    "StateChange",
    "StateChangeKind",
    "Status",
]
