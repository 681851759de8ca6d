"""Cheap call-site capture for allocation and lock-order reports.

A full ``traceback.extract_stack()`` costs tens of microseconds; walking a few
``f_back`` links costs about one.  Allocators record the site of every
allocation so a double free or a leak names the code that allocated the page.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

__all__ = ["CallSite", "Frame", "capture_call_site"]


class Frame(NamedTuple):
    """One frame of a captured call site."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


class CallSite(tuple[Frame, ...]):
    """The innermost frames (innermost first) of the code that did something."""

    __slots__ = ()

    def __str__(self) -> str:
        return " <- ".join(map(str, self)) if self else "<call site not recorded>"

    def format(self) -> str:
        """One ``file:line in function`` per line, innermost first (for reports)."""
        return "\n".join(f"  {f}" for f in self) if self else "  <call site not recorded>"


#: Returned when capture is switched off; falsy, formats as "not recorded".
NO_CALL_SITE = CallSite()


def capture_call_site(skip: int = 1, depth: int = 4, exclude: str = "") -> CallSite:
    """Capture up to ``depth`` frames of the caller's stack.

    :param skip: frames to skip above this function (1 = the caller of our caller is first).
    :param depth: how many frames to keep.
    :param exclude: drop frames whose file name starts with this (the library's own
        wrappers, so the report names the caller's code).
    :returns: the captured frames, innermost first.
    """
    try:
        frame = sys._getframe(skip + 1)
    except ValueError:
        return NO_CALL_SITE
    frames = []
    while frame is not None and len(frames) < depth:
        code = frame.f_code
        if not exclude or not code.co_filename.startswith(exclude):
            frames.append(Frame(code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return CallSite(frames)
