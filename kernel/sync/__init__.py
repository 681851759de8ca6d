"""svsm.kernel.sync."""

__all__: list[str] = []
