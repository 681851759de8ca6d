"""Kernel side of the storage syscalls: a backend per namespace, swappable at run time.

Until a module with capability ``serve_storage`` runs, storage is a volatile dict held
by the kernel.  :class:`StorageRouter` sends each namespace to the current provider,
so the persistence module can take over (CONTRACTS.md "Storage syscalls").
"""

from __future__ import annotations

import threading
from typing import NamedTuple, Protocol

from svsm.sdk import InvalidRequest

__all__ = ["StorageBackend", "VolatileStorage", "StorageRouter", "StorageStatistics"]


class StorageBackend(Protocol):
    """Where the storage syscalls of one namespace go.  Methods may raise ``RequestError``."""

    def get(self, namespace: str, key: str) -> bytes | None: ...

    def put(self, namespace: str, key: str, value: bytes) -> None: ...

    def delete(self, namespace: str, key: str) -> bool: ...

    def list(self, namespace: str, prefix: str) -> list[str]: ...


class StorageStatistics(NamedTuple):
    """Counters of the volatile store."""

    namespaces: int
    keys: int
    bytes: int


class VolatileStorage:
    """A dict per namespace in kernel memory: survives module restarts, not reboots.

    Each namespace has a quota, so a module cannot exhaust the kernel's memory.

    :param max_bytes: per-namespace bytes (keys + values).
    :param max_keys: per-namespace keys.
    """

    def __init__(self, max_bytes: int = 32 << 20, max_keys: int = 4096) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, bytes]] = {}
        self._used: dict[str, int] = {}
        self.max_bytes, self.max_keys = max_bytes, max_keys

    def get(self, namespace: str, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(namespace, {}).get(key)

    def put(self, namespace: str, key: str, value: bytes) -> None:
        """Store ``value``.  :raises InvalidRequest: the namespace's quota would be exceeded."""
        with self._lock:
            ns = self._data.setdefault(namespace, {})
            old = ns.get(key)
            used = self._used.get(namespace, 0) - (len(key) + len(old) if old is not None else 0)
            if used + len(key) + len(value) > self.max_bytes or (old is None and len(ns) >= self.max_keys):
                raise InvalidRequest(f"storage quota of {namespace} exceeded")
            ns[key] = bytes(value)
            self._used[namespace] = used + len(key) + len(value)

    def delete(self, namespace: str, key: str) -> bool:
        with self._lock:
            old = self._data.get(namespace, {}).pop(key, None)
            if old is None:
                return False
            self._used[namespace] -= len(key) + len(old)
            return True

    def list(self, namespace: str, prefix: str) -> list[str]:
        with self._lock:
            return sorted(k for k in self._data.get(namespace, {}) if k.startswith(prefix))

    def statistics(self) -> StorageStatistics:
        """Counters."""
        with self._lock:
            keys = sum(len(d) for d in self._data.values())
            size = sum(len(v) for d in self._data.values() for v in d.values())
            return StorageStatistics(len(self._data), keys, size)


class StorageRouter:
    """Sends every namespace to the current provider; the provider's own namespace stays volatile.

    :param fallback: the volatile store used until a provider is set (and for the provider itself).
    """

    def __init__(self, fallback: StorageBackend | None = None) -> None:
        self.fallback: StorageBackend = fallback if fallback is not None else VolatileStorage()
        self._provider: StorageBackend | None = None
        self._provider_ns: str | None = None

    def set_provider(self, backend: StorageBackend | None, namespace: str | None = None) -> None:
        """Route storage to ``backend`` (``None``: back to volatile); ``namespace`` is the provider's own."""
        self._provider, self._provider_ns = backend, namespace

    @property
    def provider_namespace(self) -> str | None:
        """Name of the module serving storage, if any."""
        return self._provider_ns if self._provider is not None else None

    def backend_for(self, namespace: str) -> StorageBackend:
        """The backend serving ``namespace``."""
        if self._provider is None or namespace == self._provider_ns:
            return self.fallback
        return self._provider
