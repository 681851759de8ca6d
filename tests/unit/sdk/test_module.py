"""Manifest validation and the module-side values."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from svsm.sdk import (
    BufferSpec,
    CallSpec,
    InvalidAddress,
    InvalidFormat,
    InvalidParameter,
    Manifest,
    ProtocolSpec,
    ResultCode,
    load_manifest,
)
from svsm.sdk._module import Grant


def obj(manifest: Any) -> Any:
    return type("M", (), {"MANIFEST": manifest})


def test_valid_manifest_from_dict_and_struct() -> None:
    raw = {"name": "abc_1", "version": "1", "protocols": [{"number": 2, "calls": [{"call": 1}]}], "capabilities": ["log"]}
    m = load_manifest(obj(raw))
    assert m.protocol(2).call_spec(1) == CallSpec(call=1) and m.protocol(2).call_spec(0) is None
    assert load_manifest(obj(m)) == m


@pytest.mark.parametrize(
    "raw",
    [
        {"name": "Bad", "version": "1"},
        {"name": "x" * 33, "version": "1"},
        {"name": "a", "version": ""},
        {"name": "a", "version": "1", "typo_field": 1},
        {"name": "a", "version": "1", "capabilities": ["root"]},
        {"name": "a", "version": "1", "protocols": [{"number": 0, "calls": []}]},
        {"name": "a", "version": "1", "protocols": [{"number": 1, "calls": []}]},
        {"name": "a", "version": "1", "protocols": [{"number": 5, "calls": [{"call": 1}, {"call": 1}]}]},
        {"name": "a", "version": "1", "protocols": [{"number": 5, "calls": [], "min_version": 2, "max_version": 1}]},
        {"name": "a", "version": "1", "service_guid": "not-a-guid"},
        {"name": "a", "version": "1", "request_timeout": 0},
        {"name": "a", "version": "1", "protocols": [{"number": 5, "calls": [{"call": 0, "buffer": {"size": 8, "size_register": "rdx"}}]}]},
        {"name": "a", "version": "1", "protocols": [{"number": 5, "calls": [{"call": 0, "buffer": {}}]}]},
        {"name": "a", "version": "1", "protocols": [{"number": 5, "calls": [{"call": 0, "buffer": {"size": 1 << 20}}]}]},
        {"name": "a", "version": 1},
    ],
)
def test_invalid_manifests_rejected(raw: dict) -> None:
    with pytest.raises(InvalidFormat) as ei:
        load_manifest(obj(raw))
    assert ei.value.code == ResultCode.INVALID_FORMAT


def test_missing_manifest() -> None:
    with pytest.raises(InvalidFormat):
        load_manifest(object())


def test_buffer_spec_needs_exactly_one_size() -> None:
    with pytest.raises(ValueError):
        BufferSpec()
    assert BufferSpec(size_register="rdx").size is None


def test_manifest_struct_is_frozen_and_strict_json() -> None:
    m = Manifest(name="a", version="1", protocols=[ProtocolSpec(number=7, calls=[])])
    with pytest.raises(AttributeError):
        m.name = "b"  # type: ignore[misc]
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"name":"a","version":"1","extra":1}', type=Manifest)


class _Sys:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int, bytes]] = []

    def grant_write(self, gid: int, off: int, data: bytes) -> None:
        self.writes.append((gid, off, data))


def test_grant_checks_locally_before_asking_the_kernel() -> None:
    s = _Sys()
    g = Grant(3, 0x1000, 16, True, s)  # type: ignore[arg-type]
    g.write(12, b"abcd")
    with pytest.raises(InvalidAddress):
        g.write(13, b"abcd")
    with pytest.raises(InvalidParameter):
        Grant(3, 0x1000, 16, False, s).write(0, b"x")  # type: ignore[arg-type]
    assert s.writes == [(3, 12, b"abcd")]
