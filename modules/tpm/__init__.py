"""svsm.modules.tpm."""

__all__: list[str] = []
