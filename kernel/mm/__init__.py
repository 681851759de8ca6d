"""svsm.kernel.mm."""

__all__: list[str] = []
