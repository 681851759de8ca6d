"""svsm.kernel -- the trusted SVSM kernel (VMPL0) and the simulated SEV-SNP platform under it.

Subpackages: ``hw`` (silicon + PSP firmware + hypervisor), ``mm``, ``sync``, ``sched``,
``protocols``, ``ipc`` (ring-3 module runtime) and ``cli`` (the ``svsm`` command).

``svsm.kernel.boot(vcpus=2, memory="64M", guest_vmpl=2)`` boots a CVM (a context manager
yielding a running :class:`Cvm`).  It is loaded on first use, so importing a subpackage stays
cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["boot", "Cvm", "Svsm", "MemoryLayout", "kernel_image"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import _boot

        return getattr(_boot, name)
    raise AttributeError(f"module 'svsm.kernel' has no attribute {name!r}")
