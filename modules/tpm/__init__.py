"""svsm.modules.tpm: a TPM 2.0 engine in pure Python, and the SVSM vTPM service module.

Quick start::

    from svsm.modules.tpm import Tpm
    tpm = Tpm()                                   # manufactured and powered on
    rsp = tpm.execute(bytes.fromhex("80010000000c000001440000"))   # TPM2_Startup(CLEAR)
"""

from ._engine import Tpm as Tpm
from ._engine import TpmStatistics as TpmStatistics
from ._marshal import TpmError as TpmError
from ._state import StateError as StateError

__all__ = ["Tpm", "TpmStatistics", "TpmError", "StateError"]
