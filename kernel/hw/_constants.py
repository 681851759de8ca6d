"""Architectural numbers of the simulated SEV-SNP platform, copied from spec/snp.md.

Every constant names the section of ``snp.md`` it comes from.  Nothing here is invented:
where the spec lists a value as unconfirmed (snp.md 7) the constant says so.
"""

from __future__ import annotations

import enum

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT  # 4 KiB
PAGE_SIZE_2M = 2 << 20
PAGES_PER_2M = PAGE_SIZE_2M // PAGE_SIZE  # 512

#: Number of VMPLs (CPUID 0x8000_001F EBX[15:12], snp.md 5.1); COCONUT and Linux use 4.
VMPL_COUNT = 4


class RmpPageSize(enum.IntEnum):
    """RMP PAGE_SIZE and the ECX size operand of PVALIDATE/RMPADJUST (snp.md 5.1-5.3)."""

    SIZE_4K = 0
    SIZE_2M = 1


class VmplPermission(enum.IntFlag):
    """Per-VMPL permission mask (snp.md 5.1)."""

    READ = 1 << 0
    WRITE = 1 << 1
    EXECUTE_USER = 1 << 2
    EXECUTE_SUPERVISOR = 1 << 3
    SUPERVISOR_SHADOW_STACK = 1 << 4


#: What RMPUPDATE gives VMPL0 when it assigns a page to a guest (snp.md 5.1: "all permissions").
VMPL_PERMS_ALL = 0x1F
#: Bits 7:5 of a permission mask are reserved (snp.md 5.1).
VMPL_PERMS_RESERVED = 0xE0


class PvalidateResult(enum.IntEnum):
    """EAX after PVALIDATE (snp.md 5.2)."""

    SUCCESS = 0
    FAIL_INPUT = 1
    #: Returned when PVALIDATE runs above VMPL0.  snp.md 7 lists this case as unconfirmed
    #: (error code vs #GP); we pick the error code so the caller can observe it.
    FAIL_PERMISSION = 2
    FAIL_SIZEMISMATCH = 6


class RmpadjustResult(enum.IntEnum):
    """EAX after RMPADJUST (snp.md 5.3)."""

    SUCCESS = 0
    FAIL_INPUT = 1
    FAIL_PERMISSION = 2
    FAIL_SIZEMISMATCH = 6


class RmpupdateResult(enum.IntEnum):
    """Return code of RMPUPDATE / PSMASH (snp.md 5.4).

    FAIL_OVERLAP (4) and FAIL_INUSE (3) are from the spec; FAIL_INPUT (1) and FAIL_PERMISSION (2)
    follow the numbering the guest instructions use (snp.md 7 lists them as unconfirmed).
    """

    SUCCESS = 0
    FAIL_INPUT = 1
    FAIL_PERMISSION = 2
    FAIL_INUSE = 3
    FAIL_OVERLAP = 4


# RMPADJUST RDX attribute layout (snp.md 5.3).
RMPADJUST_TARGET_VMPL_MASK = 0xFF
RMPADJUST_PERMS_SHIFT = 8
RMPADJUST_VMSA = 1 << 16

# Nested page fault EXITINFO1 bits (snp.md 5.4, plus the architectural #PF error-code bits).
PF_PRESENT = 1 << 0
PF_WRITE = 1 << 1
PF_USER = 1 << 2
PF_FETCH = 1 << 4
#: RMP violation: host #PF error code bit 31 (snp.md 5.4); Linux uses the same bit in NPF EXITINFO1.
PF_RMP = 1 << 31
NPF_ENC = 1 << 34
NPF_SIZEM = 1 << 35
NPF_VMPL = 1 << 36
NPF_SSS = 1 << 37

#: #VC error code for an access to a page whose RMP VALIDATED bit is clear (snp.md 5.4).
VC_PAGE_NOT_VALIDATED = 0x404
VC_VECTOR = 29
HV_VECTOR = 28
#: VMEXIT_INVALID: VMRUN refused the VMSA (snp.md 5.4).
VMEXIT_INVALID = -1
#: Exit code the hypervisor sees for VMGEXIT (snp.md 4).
VMEXIT_VMGEXIT = 0x403

# MSRs (snp.md 4, 5.1, 6).
MSR_GHCB = 0xC001_0130
MSR_SEV_STATUS = 0xC001_0131
MSR_RMP_BASE = 0xC001_0132
MSR_RMP_END = 0xC001_0133

# SEV_FEATURES bits (snp.md 6).
SEV_FEATURE_SNP_ACTIVE = 1 << 0
SEV_FEATURE_VTOM = 1 << 1
SEV_FEATURE_REFLECT_VC = 1 << 2
SEV_FEATURE_RESTRICTED_INJECTION = 1 << 3
SEV_FEATURE_ALTERNATE_INJECTION = 1 << 4
SEV_FEATURE_DEBUG_SWAP = 1 << 5
SEV_FEATURE_PREVENT_HOST_IBS = 1 << 6
SEV_FEATURE_BTB_ISOLATION = 1 << 7
SEV_FEATURE_SMT_PROTECTION = 1 << 15

# SEV_STATUS bits (snp.md 6): bit0 SEV, 1 SEV-ES, 2 SNP, bit (n+2) = SEV_FEATURES bit n for n >= 1.
SEV_STATUS_SEV = 1 << 0
SEV_STATUS_SEV_ES = 1 << 1
SEV_STATUS_SNP = 1 << 2

#: GHCB protocol versions the platform supports (snp.md 4: Linux min 1, max 2; SNP needs 2).
GHCB_PROTOCOL_MIN = 1
GHCB_PROTOCOL_MAX = 2
