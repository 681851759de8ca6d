"""svsm.modules.migrate."""

__all__: list[str] = []
