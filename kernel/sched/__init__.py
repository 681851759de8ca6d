"""svsm.kernel.sched."""

__all__: list[str] = []
