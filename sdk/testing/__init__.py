"""svsm.sdk.testing -- pytest plugin, fake clock and the module conformance suite.

``require_tool`` / ``require_module`` / ``require_root`` skip a test when an external
dependency is missing, and fail it instead under ``SVSM_STRICT=1`` (CI).

Fixtures (auto-loaded plugin ``svsm``): ``svsm_module_host`` (run modules in-process
or sandboxed), ``svsm_vm`` (boot a CVM with modules; ``cvm.guest`` drives it),
``abi_frames`` (recorded ABI frames), ``fake_clock``.  :func:`check_module` runs the
module conformance suite.
"""

from ._clock import FakeClock as FakeClock
from ._conformance import ConformanceReport as ConformanceReport
from ._conformance import check_module as check_module
from ._frames import FrameRecorder as FrameRecorder
from ._frames import RecordedFrame as RecordedFrame
from ._memory import FakeGuestMemory as FakeGuestMemory
from ._tools import require_module as require_module
from ._tools import require_root as require_root
from ._tools import require_tool as require_tool
from ._tools import strict as strict

__all__ = [
    "ConformanceReport",
    "FakeClock",
    "FakeGuestMemory",
    "FrameRecorder",
    "RecordedFrame",
    "check_module",
    "require_module",
    "require_root",
    "require_tool",
    "strict",
]
