"""The measured SVSM launch parameters page (upstream: the IGVM parameters COCONUT is launched with).

One page, laid into the launch plan as a NORMAL page, so the launch digest covers what the
launcher chose: the guest VMPL (where the guest OS runs, which a verifier must know), the vCPU
count and the memory size.  The kernel reads its parameters from this page at init and refuses
to run with others, so what is measured is what runs.
"""

from __future__ import annotations

import ctypes

from svsm.sdk import FatalError

__all__ = ["SVSM_LAUNCH_PARAMS", "LAUNCH_PARAMS_MAGIC", "LAUNCH_PARAMS_VERSION", "launch_parameters_page",
           "read_launch_parameters"]

LAUNCH_PARAMS_MAGIC = b"PYSVSMLP"
LAUNCH_PARAMS_VERSION = 1
PAGE = 0x1000


class SVSM_LAUNCH_PARAMS(ctypes.LittleEndianStructure):
    """Layout of the page's first 32 bytes (the rest is zero)."""

    _pack_ = 1
    _fields_ = [
        ("magic", ctypes.c_char * 8),
        ("version", ctypes.c_uint32),
        ("guest_vmpl", ctypes.c_uint32),
        ("vcpus", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("memory_size", ctypes.c_uint64),
    ]


assert ctypes.sizeof(SVSM_LAUNCH_PARAMS) == 32
assert SVSM_LAUNCH_PARAMS.guest_vmpl.offset == 12 and SVSM_LAUNCH_PARAMS.memory_size.offset == 24


def launch_parameters_page(*, guest_vmpl: int, vcpus: int, memory_size: int) -> bytes:
    """The page the launcher measures."""
    p = SVSM_LAUNCH_PARAMS(LAUNCH_PARAMS_MAGIC, LAUNCH_PARAMS_VERSION, guest_vmpl, vcpus, 0, memory_size)
    return bytes(p).ljust(PAGE, b"\0")


def read_launch_parameters(page: bytes) -> SVSM_LAUNCH_PARAMS:
    """Decode the page the kernel finds in its memory.

    :raises FatalError: no parameters page (wrong magic or version): the launch is broken.
    """
    p = SVSM_LAUNCH_PARAMS.from_buffer_copy(page[: ctypes.sizeof(SVSM_LAUNCH_PARAMS)])
    if p.magic != LAUNCH_PARAMS_MAGIC or p.version != LAUNCH_PARAMS_VERSION:
        raise FatalError("no SVSM launch parameters page")
    return p
