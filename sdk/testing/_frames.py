"""Recording ABI frames for assertions (pytester's ``HookRecorder`` for the module ABI)."""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

__all__ = ["FrameRecorder", "RecordedFrame"]


class RecordedFrame(NamedTuple):
    """One decoded frame seen by the kernel: ``"in"`` from the module, ``"out"`` to it."""

    direction: str
    message: Any


class FrameRecorder:
    """A recorder callable for ``ModuleHost(recorder=...)``; keeps every frame in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames: list[RecordedFrame] = []

    def __call__(self, direction: str, message: Any) -> None:
        with self._lock:
            self.frames.append(RecordedFrame(direction, message))

    def of_type(self, cls: type, direction: str | None = None) -> list[Any]:
        """Messages of type ``cls`` (optionally only one direction), in order."""
        with self._lock:
            return [f.message for f in self.frames if isinstance(f.message, cls) and direction in (None, f.direction)]

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self.frames.clear()
