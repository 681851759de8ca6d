"""svsm.sdk.attestation -- SEV-SNP attestation reports and guest messages, without the kernel.

Parse a report, check it against the ARK -> ASK -> VCEK chain, render it::

    from svsm.sdk.attestation import AttestationReport, load_chain, verify_report
    chain = load_chain(ark_pem, ask_pem, vcek_pem)
    report = verify_report(report_bytes, chain)   # raises VerificationError
    assert report.report_data[:32] == my_nonce

Also here because guests and modules need them and may not import the kernel: the
guest-message header and AES-256-GCM sealing under a VMPCK (:class:`GuestMessageClient`),
MSG_REPORT/MSG_KEY payload layouts, the secrets page layout and the extended-request
certificate table.

.. versionadded:: 0.1
"""

from ._certtable import ARK_GUID as ARK_GUID
from ._certtable import ASK_GUID as ASK_GUID
from ._certtable import CERT_TABLE_ENTRY as CERT_TABLE_ENTRY
from ._certtable import VCEK_GUID as VCEK_GUID
from ._certtable import VLEK_GUID as VLEK_GUID
from ._certtable import CertTableError as CertTableError
from ._certtable import build_cert_table as build_cert_table
from ._certtable import parse_cert_table as parse_cert_table
from ._guest_msg import HDR_SIZE as HDR_SIZE
from ._guest_msg import MAX_PAYLOAD as MAX_PAYLOAD
from ._guest_msg import SNP_GUEST_MSG_HDR as SNP_GUEST_MSG_HDR
from ._guest_msg import SNP_KEY_REQ as SNP_KEY_REQ
from ._guest_msg import SNP_KEY_RSP as SNP_KEY_RSP
from ._guest_msg import SNP_REPORT_REQ as SNP_REPORT_REQ
from ._guest_msg import SNP_REPORT_RSP as SNP_REPORT_RSP
from ._guest_msg import GuestMessageClient as GuestMessageClient
from ._guest_msg import GuestMessageError as GuestMessageError
from ._guest_msg import GuestMessageHeader as GuestMessageHeader
from ._guest_msg import MsgType as MsgType
from ._guest_msg import open_message as open_message
from ._guest_msg import seal_message as seal_message
from ._render import report_table as report_table
from ._render import report_to_dict as report_to_dict
from ._report import ATTESTATION_REPORT as ATTESTATION_REPORT
from ._report import REPORT_SIZE as REPORT_SIZE
from ._report import SIGNED_SIZE as SIGNED_SIZE
from ._report import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS
from ._report import AttestationReport as AttestationReport
from ._report import ReportFormatError as ReportFormatError
from ._report import TcbLayout as TcbLayout
from ._report import TcbVersion as TcbVersion
from ._report import build_report_bytes as build_report_bytes
from ._report import decode_tcb as decode_tcb
from ._report import encode_tcb as encode_tcb
from ._secrets import SNP_SECRETS_PAGE as SNP_SECRETS_PAGE
from ._verify import PSS_PADDING as PSS_PADDING
from ._verify import CertChain as CertChain
from ._verify import VcekExtensions as VcekExtensions
from ._verify import VcekOid as VcekOid
from ._verify import VerificationError as VerificationError
from ._verify import load_chain as load_chain
from ._verify import vcek_extensions as vcek_extensions
from ._verify import verify_chain as verify_chain
from ._verify import verify_report as verify_report
from ._verify import verify_report_signature as verify_report_signature

__all__ = [
    "ARK_GUID", "ASK_GUID", "ATTESTATION_REPORT", "AttestationReport", "CERT_TABLE_ENTRY",
    "CertChain", "CertTableError", "GuestMessageClient", "GuestMessageError",
    "GuestMessageHeader", "HDR_SIZE", "MAX_PAYLOAD", "MsgType", "PSS_PADDING", "REPORT_SIZE",
    "ReportFormatError", "SIGNED_SIZE", "SNP_GUEST_MSG_HDR", "SNP_KEY_REQ", "SNP_KEY_RSP",
    "SNP_REPORT_REQ", "SNP_REPORT_RSP", "SNP_SECRETS_PAGE", "SUPPORTED_VERSIONS", "TcbLayout",
    "TcbVersion", "VCEK_GUID", "VLEK_GUID", "VcekExtensions", "VcekOid", "VerificationError",
    "build_cert_table", "build_report_bytes", "decode_tcb", "encode_tcb", "load_chain",
    "open_message", "parse_cert_table", "report_table", "report_to_dict", "seal_message",
    "vcek_extensions", "verify_chain", "verify_report", "verify_report_signature",
]  # fmt: skip
