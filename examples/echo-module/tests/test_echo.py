"""The example module's own tests, through the pysvsm pytest plugin."""

import hashlib

from svsm.sdk import ResultCode
from svsm.sdk.testing import FakeGuestMemory, check_module

from svsm_echo import CALL_DIGEST, CALL_ECHO, CALL_REVERSE, ECHO_PROTOCOL, EchoModule


def test_conformance():
    assert check_module(EchoModule).calls_checked == 3


def test_calls(svsm_module_host):
    host = svsm_module_host(EchoModule)
    assert host.call(ECHO_PROTOCOL, CALL_ECHO, rcx=41)[:3] == (0, 41, 1)
    mem = FakeGuestMemory(0x4000)
    mem.write(0x1000, b"abc")
    assert host.call(ECHO_PROTOCOL, CALL_REVERSE, rcx=0x1000, rdx=3, memory=mem).rax == 0
    assert mem.read(0x1000, 3) == b"cba"
    out = host.call(ECHO_PROTOCOL, CALL_DIGEST, rcx=0x1000, rdx=3, memory=mem)
    assert out.rcx.to_bytes(8, "little") == hashlib.sha256(b"cba").digest()[:8]
    assert host.call(ECHO_PROTOCOL, CALL_REVERSE, rcx=0x1000, rdx=5000, memory=mem).rax == ResultCode.INVALID_PARAMETER
