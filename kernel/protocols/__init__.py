"""SVSM protocols served in the kernel (core, attestation) and request dispatch."""

from .errors import to_result_code as to_result_code

__all__ = ["to_result_code"]
