"""Shipped ring-3 service modules (tpm, persist, migrate); each imports only svsm.sdk."""

__all__: list[str] = []
