"""svsm.kernel.hw."""

__all__: list[str] = []
