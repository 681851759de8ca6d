"""svsm.kernel -- the trusted SVSM kernel (VMPL0) and the simulated SEV-SNP platform under it.

Subpackages: ``hw`` (silicon + PSP firmware + hypervisor), ``mm``, ``sync``, ``sched``,
``protocols``, ``ipc`` (ring-3 module runtime) and ``cli`` (the ``svsm`` command).
"""

__all__: list[str] = []
