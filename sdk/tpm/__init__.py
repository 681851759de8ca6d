"""svsm.sdk.tpm -- TPM command-byte transports: mssim, swtpm, and the SVSM vTPM buffer.

Generic over any :class:`TpmDevice` (``execute(command, locality) -> response``), so the
same servers expose the engine directly, a guest's vTPM through the SVSM, or a real swtpm.
"""

from ._client import MssimClient as MssimClient
from ._client import SwtpmClient as SwtpmClient
from ._driver import DriverStatistics as DriverStatistics
from ._driver import VtpmDriver as VtpmDriver
from ._driver import VtpmGuest as VtpmGuest
from ._errors import TransportError as TransportError
from ._mssim import MssimCode as MssimCode
from ._mssim import MssimConnection as MssimConnection
from ._mssim import MssimPort as MssimPort
from ._mssim import MssimReader as MssimReader
from ._mssim import encode_command_response as encode_command_response
from ._mssim import encode_send_command as encode_send_command
from ._platform import PlatformStatistics as PlatformStatistics
from ._platform import TpmDevice as TpmDevice
from ._platform import TpmPlatform as TpmPlatform
from ._server import MssimServer as MssimServer
from ._server import ServerStatistics as ServerStatistics
from ._server import SwtpmServer as SwtpmServer
from ._server import TpmServer as TpmServer
from ._server import free_port_pair as free_port_pair
from ._swtpm import SwtpmCmd as SwtpmCmd
from ._swtpm import SwtpmControl as SwtpmControl
from ._swtpm import SwtpmControlReader as SwtpmControlReader
from ._swtpm import SwtpmData as SwtpmData
from ._swtpm import SwtpmDataReader as SwtpmDataReader
from ._vtpm import SVSM_VTPM_CMD as SVSM_VTPM_CMD
from ._vtpm import SVSM_VTPM_PROTOCOL as SVSM_VTPM_PROTOCOL
from ._vtpm import SVSM_VTPM_QUERY as SVSM_VTPM_QUERY
from ._vtpm import TPM_SEND_COMMAND as TPM_SEND_COMMAND
from ._vtpm import VTPM_BUFFER_SIZE as VTPM_BUFFER_SIZE
from ._vtpm import VTPM_MAX_COMMAND as VTPM_MAX_COMMAND
from ._vtpm import VTPM_MAX_RESPONSE as VTPM_MAX_RESPONSE
from ._vtpm import VTPM_QUERY_FEATURES as VTPM_QUERY_FEATURES
from ._vtpm import VTPM_QUERY_PLATFORM_COMMANDS as VTPM_QUERY_PLATFORM_COMMANDS
from ._vtpm import VtpmRequest as VtpmRequest
from ._vtpm import decode_vtpm_request as decode_vtpm_request
from ._vtpm import decode_vtpm_response as decode_vtpm_response
from ._vtpm import encode_vtpm_request as encode_vtpm_request
from ._vtpm import encode_vtpm_response as encode_vtpm_response

__all__ = [
    "DriverStatistics",
    "VtpmDriver",
    "VtpmGuest",
    "MssimClient",
    "MssimCode",
    "MssimConnection",
    "MssimPort",
    "MssimReader",
    "MssimServer",
    "PlatformStatistics",
    "SVSM_VTPM_CMD",
    "SVSM_VTPM_PROTOCOL",
    "SVSM_VTPM_QUERY",
    "ServerStatistics",
    "SwtpmClient",
    "SwtpmCmd",
    "SwtpmControl",
    "SwtpmControlReader",
    "SwtpmData",
    "SwtpmDataReader",
    "SwtpmServer",
    "TPM_SEND_COMMAND",
    "TpmDevice",
    "TpmPlatform",
    "TpmServer",
    "TransportError",
    "VTPM_BUFFER_SIZE",
    "VTPM_MAX_COMMAND",
    "VTPM_MAX_RESPONSE",
    "VTPM_QUERY_FEATURES",
    "VTPM_QUERY_PLATFORM_COMMANDS",
    "VtpmRequest",
    "decode_vtpm_request",
    "decode_vtpm_response",
    "encode_command_response",
    "encode_send_command",
    "encode_vtpm_request",
    "encode_vtpm_response",
    "free_port_pair",
]
