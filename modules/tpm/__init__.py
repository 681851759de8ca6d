"""svsm.modules.tpm: a TPM 2.0 engine in pure Python, and the SVSM vTPM service module.

The package is the module object of the ``tpm`` entry point (``MANIFEST`` + hook functions).
The engine is usable on its own::

    from svsm.modules.tpm import Tpm
    tpm = Tpm()                                   # manufactured and powered on, not started
    rsp = tpm.execute(bytes.fromhex("80010000000c000001440000"))   # TPM2_Startup(CLEAR)
    blob = tpm.save_state()                       # later: Tpm(state=blob)

Layout: ``_engine`` (framing, sessions in the auth area, response building), ``_entities``
(handles, DA), ``_dispatch`` (the command table), ``_marshal``/``_structs`` (wire formats),
``_crypto`` (KDFa/KDFe, deterministic primaries), ``_objects``/``_sessions``/``_nv``/``_pcr``
(state), ``_cmd_*`` (command actions by area), ``_state`` (versioned save/restore), ``_ek``
(EK templates and certificates), ``_module`` (SVSM protocol 2).

Deliberate differences from the reference TPM: TPM2B_PRIVATE and context blobs use this engine's
own (integrity-protected, encrypted) format; child keys come from the OS CSPRNG rather than the
injected ``rng``; a hash sequence holding more than 1.5 KiB cannot be context-saved; EK
certificates are issued by a CA derived from the platform seed (no platform CA syscall yet).
"""

from ._ek import EK_CERT_ECC_INDEX as EK_CERT_ECC_INDEX
from ._ek import EK_CERT_RSA_INDEX as EK_CERT_RSA_INDEX
from ._ek import ek_ca_certificate as ek_ca_certificate
from ._ek import ek_template_ecc256 as ek_template_ecc256
from ._ek import ek_template_rsa2048 as ek_template_rsa2048
from ._ek import provision_ek as provision_ek
from ._engine import Tpm as Tpm
from ._engine import TpmStatistics as TpmStatistics
from ._marshal import TpmError as TpmError
from ._module import MANIFEST as MANIFEST
from ._module import VTPM_SERVICE_GUID as VTPM_SERVICE_GUID
from ._module import VtpmService as VtpmService
from ._module import svsm_handle_request as svsm_handle_request
from ._module import svsm_module_start as svsm_module_start
from ._module import svsm_module_stop as svsm_module_stop
from ._module import svsm_restore_state as svsm_restore_state
from ._module import svsm_save_state as svsm_save_state
from ._module import svsm_service_manifest as svsm_service_manifest
from ._state import StateError as StateError

__all__ = ["Tpm", "TpmStatistics", "TpmError", "StateError", "MANIFEST", "VTPM_SERVICE_GUID", "VtpmService",
           "provision_ek", "ek_ca_certificate", "ek_template_rsa2048", "ek_template_ecc256", "EK_CERT_RSA_INDEX",
           "EK_CERT_ECC_INDEX", "svsm_module_start", "svsm_handle_request", "svsm_save_state",
           "svsm_restore_state", "svsm_service_manifest", "svsm_module_stop"]
