"""svsm.kernel.ipc."""

__all__: list[str] = []
