"""svsm.kernel.hw.testing -- helpers to bring up a small simulated machine in tests.

.. versionadded:: 0.1
"""

from ._calls import ghcb_call as ghcb_call
from ._calls import msr_call as msr_call
from ._machine import VMSA_REGION_PAGES as VMSA_REGION_PAGES
from ._machine import make_guest as make_guest

__all__ = ["VMSA_REGION_PAGES", "ghcb_call", "make_guest", "msr_call"]
