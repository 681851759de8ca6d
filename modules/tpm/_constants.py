"""TPM 2.0 constants: command codes, response codes, algorithm IDs, handles, attribute bits.

Values are copied from spec/tpm.md (sections 3, 4, 5, 6, 9, 10), which took them from
ms-tpm-20-ref and tpm2-tss.  Plain ``int`` constants on classes (not ``IntEnum``) keep the
command path free of enum lookups.
"""

from __future__ import annotations

__all__ = ["CC", "RC", "ALG", "ST", "SU", "SE", "RH", "HT", "TPMA_OBJECT", "TPMA_NV", "TPMA_SESSION",
           "NT", "CAP", "PT", "ECC_CURVE", "rc_param", "rc_handle", "rc_session", "RC_FMT1", "RC_P", "RC_S"]


class CC:
    """TPM_CC command codes (tpm.md 3)."""

    NV_UndefineSpaceSpecial = 0x11F
    EvictControl = 0x120
    HierarchyControl = 0x121
    NV_UndefineSpace = 0x122
    Clear = 0x126
    ClearControl = 0x127
    ClockSet = 0x128
    HierarchyChangeAuth = 0x129
    NV_DefineSpace = 0x12A
    PCR_Allocate = 0x12B
    ChangeEPS = 0x124
    ChangePPS = 0x125
    SetPrimaryPolicy = 0x12E
    CreatePrimary = 0x131
    NV_GlobalWriteLock = 0x132
    GetCommandAuditDigest = 0x133
    GetSessionAuditDigest = 0x14D
    NV_Increment = 0x134
    NV_SetBits = 0x135
    NV_Extend = 0x136
    NV_Write = 0x137
    NV_WriteLock = 0x138
    DictionaryAttackLockReset = 0x139
    DictionaryAttackParameters = 0x13A
    NV_ChangeAuth = 0x13B
    PCR_Event = 0x13C
    PCR_Reset = 0x13D
    SequenceComplete = 0x13E
    SetCommandCodeAuditStatus = 0x140
    IncrementalSelfTest = 0x142
    SelfTest = 0x143
    Startup = 0x144
    Shutdown = 0x145
    StirRandom = 0x146
    ActivateCredential = 0x147
    Certify = 0x148
    CertifyCreation = 0x14A
    PolicyNV = 0x149
    Duplicate = 0x14B
    GetTime = 0x14C
    NV_Read = 0x14E
    NV_ReadLock = 0x14F
    ObjectChangeAuth = 0x150
    PolicySecret = 0x151
    Create = 0x153
    ECDH_ZGen = 0x154
    HMAC = 0x155
    Import = 0x156
    Load = 0x157
    Quote = 0x158
    RSA_Decrypt = 0x159
    HMAC_Start = 0x15B
    SequenceUpdate = 0x15C
    Sign = 0x15D
    Unseal = 0x15E
    ContextLoad = 0x161
    ContextSave = 0x162
    ECDH_KeyGen = 0x163
    EncryptDecrypt = 0x164
    FlushContext = 0x165
    LoadExternal = 0x167
    MakeCredential = 0x168
    NV_ReadPublic = 0x169
    PolicySigned = 0x160
    PolicyAuthorize = 0x16A
    PolicyAuthValue = 0x16B
    PolicyCommandCode = 0x16C
    PolicyCpHash = 0x16E
    PolicyLocality = 0x16F
    PolicyNameHash = 0x170
    PolicyOR = 0x171
    PolicyTicket = 0x172
    ReadPublic = 0x173
    RSA_Encrypt = 0x174
    StartAuthSession = 0x176
    VerifySignature = 0x177
    ECC_Parameters = 0x178
    GetCapability = 0x17A
    GetRandom = 0x17B
    GetTestResult = 0x17C
    Hash = 0x17D
    PCR_Read = 0x17E
    PolicyPCR = 0x17F
    PolicyRestart = 0x180
    ReadClock = 0x181
    PCR_Extend = 0x182
    NV_Certify = 0x184
    EventSequenceComplete = 0x185
    HashSequenceStart = 0x186
    PolicyGetDigest = 0x189
    TestParms = 0x18A
    PolicyPassword = 0x18C
    PolicyCounterTimer = 0x16D
    PolicyPhysicalPresence = 0x187
    PolicyDuplicationSelect = 0x188
    PolicyNvWritten = 0x18F
    PolicyTemplate = 0x190
    PolicyAuthorizeNV = 0x192
    CreateLoaded = 0x191
    EncryptDecrypt2 = 0x193


class RC:
    """TPM_RC response codes (tpm.md 9): format 0, format 1 (add a number), warnings."""

    SUCCESS = 0x000
    BAD_TAG = 0x01E
    INITIALIZE = 0x100
    FAILURE = 0x101
    SEQUENCE = 0x103
    PRIVATE = 0x10B
    HMAC = 0x119
    DISABLED = 0x120
    EXCLUSIVE = 0x121
    AUTH_TYPE = 0x124
    AUTH_MISSING = 0x125
    POLICY = 0x126
    PCR = 0x127
    PCR_CHANGED = 0x128
    UPGRADE = 0x12D
    TOO_MANY_CONTEXTS = 0x12E
    AUTH_UNAVAILABLE = 0x12F
    REBOOT = 0x130
    UNBALANCED = 0x131
    COMMAND_SIZE = 0x142
    COMMAND_CODE = 0x143
    AUTHSIZE = 0x144
    AUTH_CONTEXT = 0x145
    NV_RANGE = 0x146
    NV_SIZE = 0x147
    NV_LOCKED = 0x148
    NV_AUTHORIZATION = 0x149
    NV_UNINITIALIZED = 0x14A
    NV_SPACE = 0x14B
    NV_DEFINED = 0x14C
    BAD_CONTEXT = 0x150
    CPHASH = 0x151
    PARENT = 0x152
    NEEDS_TEST = 0x153
    NO_RESULT = 0x154
    SENSITIVE = 0x155
    # format 1
    ASYMMETRIC = 0x081
    ATTRIBUTES = 0x082
    HASH = 0x083
    VALUE = 0x084
    HIERARCHY = 0x085
    KEY_SIZE = 0x087
    MGF = 0x088
    MODE = 0x089
    TYPE = 0x08A
    HANDLE = 0x08B
    KDF = 0x08C
    RANGE = 0x08D
    AUTH_FAIL = 0x08E
    NONCE = 0x08F
    PP = 0x090
    SCHEME = 0x092
    SIZE = 0x095
    SYMMETRIC = 0x096
    TAG = 0x097
    SELECTOR = 0x098
    INSUFFICIENT = 0x09A
    SIGNATURE = 0x09B
    KEY = 0x09C
    POLICY_FAIL = 0x09D
    INTEGRITY = 0x09F
    TICKET = 0x0A0
    RESERVED_BITS = 0x0A1
    BAD_AUTH = 0x0A2
    EXPIRED = 0x0A3
    POLICY_CC = 0x0A4
    BINDING = 0x0A5
    CURVE = 0x0A6
    ECC_POINT = 0x0A7
    # warnings
    CONTEXT_GAP = 0x901
    OBJECT_MEMORY = 0x902
    SESSION_MEMORY = 0x903
    MEMORY = 0x904
    SESSION_HANDLES = 0x905
    OBJECT_HANDLES = 0x906
    LOCALITY = 0x907
    REFERENCE_H0 = 0x910
    REFERENCE_S0 = 0x918
    NV_RATE = 0x920
    LOCKOUT = 0x921
    RETRY = 0x922
    NV_UNAVAILABLE = 0x923


RC_FMT1 = 0x080
RC_P = 0x040
RC_S = 0x800


def rc_param(rc: int, n: int) -> int:
    """Format-1 ``rc`` tagged with parameter number ``n`` (1..15)."""
    return rc | RC_P | (n << 8) if rc & RC_FMT1 and not rc & 0xF00 else rc


def rc_handle(rc: int, n: int) -> int:
    """Format-1 ``rc`` tagged with handle number ``n`` (1..7)."""
    return rc | (n << 8) if rc & RC_FMT1 and not rc & 0xF00 else rc


def rc_session(rc: int, n: int) -> int:
    """Format-1 ``rc`` tagged with session number ``n`` (1..7)."""
    return rc | RC_S | (n << 8) if rc & RC_FMT1 and not rc & 0xF00 else rc


class ALG:
    """TPM_ALG_ID (tpm.md 5)."""

    ERROR = 0x0000
    RSA = 0x0001
    TDES = 0x0003
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    MGF1 = 0x0007
    KEYEDHASH = 0x0008
    XOR = 0x000A
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    ECSCHNORR = 0x001C
    KDF1_SP800_56A = 0x0020
    KDF2 = 0x0021
    KDF1_SP800_108 = 0x0022
    ECC = 0x0023
    SYMCIPHER = 0x0025
    CTR = 0x0040
    OFB = 0x0041
    CBC = 0x0042
    CFB = 0x0043
    ECB = 0x0044


class ST:
    """TPM_ST structure tags."""

    RSP_COMMAND = 0x00C4
    NULL = 0x8000
    NO_SESSIONS = 0x8001
    SESSIONS = 0x8002
    ATTEST_NV = 0x8014
    ATTEST_COMMAND_AUDIT = 0x8015
    ATTEST_SESSION_AUDIT = 0x8016
    ATTEST_CERTIFY = 0x8017
    ATTEST_QUOTE = 0x8018
    ATTEST_TIME = 0x8019
    ATTEST_CREATION = 0x801A
    CREATION = 0x8021
    VERIFIED = 0x8022
    AUTH_SECRET = 0x8023
    HASHCHECK = 0x8024
    AUTH_SIGNED = 0x8025


class SU:
    """TPM_SU startup/shutdown types."""

    CLEAR = 0
    STATE = 1


class SE:
    """TPM_SE session types."""

    HMAC = 0
    POLICY = 1
    TRIAL = 3


class RH:
    """Permanent handles (tpm.md 4)."""

    OWNER = 0x40000001
    NULL = 0x40000007
    PW = 0x40000009
    LOCKOUT = 0x4000000A
    ENDORSEMENT = 0x4000000B
    PLATFORM = 0x4000000C
    PLATFORM_NV = 0x4000000D


class HT:
    """Handle types (top byte)."""

    PCR = 0x00
    NV_INDEX = 0x01
    HMAC_SESSION = 0x02
    POLICY_SESSION = 0x03
    PERMANENT = 0x40
    TRANSIENT = 0x80
    PERSISTENT = 0x81


class TPMA_OBJECT:
    """TPMA_OBJECT bits (tpm.md 6)."""

    fixedTPM = 0x2
    stClear = 0x4
    fixedParent = 0x10
    sensitiveDataOrigin = 0x20
    userWithAuth = 0x40
    adminWithPolicy = 0x80
    noDA = 0x400
    encryptedDuplication = 0x800
    restricted = 0x10000
    decrypt = 0x20000
    sign = 0x40000
    x509sign = 0x80000
    RESERVED = 0x1 | 0x8 | 0x100 | 0x200 | 0xF000 | 0xFFF00000


class TPMA_NV:
    """TPMA_NV bits (tpm.md 4)."""

    PPWRITE = 0x1
    OWNERWRITE = 0x2
    AUTHWRITE = 0x4
    POLICYWRITE = 0x8
    TYPE_MASK = 0xF0
    POLICY_DELETE = 0x400
    WRITELOCKED = 0x800
    WRITEALL = 0x1000
    WRITEDEFINE = 0x2000
    WRITE_STCLEAR = 0x4000
    GLOBALLOCK = 0x8000
    PPREAD = 0x10000
    OWNERREAD = 0x20000
    AUTHREAD = 0x40000
    POLICYREAD = 0x80000
    NO_DA = 0x2000000
    ORDERLY = 0x4000000
    CLEAR_STCLEAR = 0x8000000
    READLOCKED = 0x10000000
    WRITTEN = 0x20000000
    PLATFORMCREATE = 0x40000000
    READ_STCLEAR = 0x80000000
    RESERVED = 0x300 | 0x1000000


class NT:
    """TPM_NT index types (bits 4-7 of TPMA_NV)."""

    ORDINARY = 0
    COUNTER = 1
    BITS = 2
    EXTEND = 4
    PIN_FAIL = 8
    PIN_PASS = 9


class TPMA_SESSION:
    """Session attribute bits (tpm.md 7)."""

    continueSession = 0x01
    auditExclusive = 0x02
    auditReset = 0x04
    RESERVED = 0x18
    decrypt = 0x20
    encrypt = 0x40
    audit = 0x80


class CAP:
    """TPM_CAP values (tpm.md 10)."""

    ALGS = 0
    HANDLES = 1
    COMMANDS = 2
    PP_COMMANDS = 3
    AUDIT_COMMANDS = 4
    PCRS = 5
    TPM_PROPERTIES = 6
    PCR_PROPERTIES = 7
    ECC_CURVES = 8
    AUTH_POLICIES = 9
    ACT = 10


class PT:
    """TPM_PT property groups."""

    FIXED = 0x100
    VAR = 0x200


class ECC_CURVE:
    """TPM_ECC_CURVE."""

    NONE = 0
    NIST_P256 = 0x0003
    NIST_P384 = 0x0004
