"""svsm.modules.persist."""

__all__: list[str] = []
