"""svsm.sdk.testing -- pytest plugin, fake clock and the module conformance suite.

``require_tool`` / ``require_module`` / ``require_root`` skip a test when an external
dependency is missing, and fail it instead under ``SVSM_STRICT=1`` (CI).
"""

from ._tools import require_module as require_module
from ._tools import require_root as require_root
from ._tools import require_tool as require_tool
from ._tools import strict as strict

__all__ = ["require_module", "require_root", "require_tool", "strict"]
