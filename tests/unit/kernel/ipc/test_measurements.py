"""The module-measurement services-manifest entry and code measurement."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.kernel.ipc import MeasurementEntry, decode_measurements, encode_measurements
from svsm.kernel.ipc._discovery import measure_files
from svsm.sdk import InvalidFormat


def test_round_trip_sorted() -> None:
    entries = [MeasurementEntry("tpm", "1.0", b"\1" * 48), MeasurementEntry("echo", "0.1", b"\2" * 48)]
    data = encode_measurements(entries)
    assert data[:8] == b"\x01\0\0\0\x02\0\0\0"
    assert decode_measurements(data) == sorted(entries)


def test_truncation_and_trailing_rejected() -> None:
    data = encode_measurements([MeasurementEntry("a", "1", b"\0" * 48)])
    for bad in (data[:-1], data + b"\0", b"\2\0\0\0\0\0\0\0"):
        with pytest.raises(InvalidFormat):
            decode_measurements(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decoder(data: bytes) -> None:
    try:
        out = decode_measurements(data)
    except InvalidFormat:
        return
    assert encode_measurements(out) == data or len(out) > 1


def test_measurement_changes_with_content_and_name(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    files = sorted(tmp_path.iterdir())
    m1 = measure_files(files, tmp_path)
    assert len(m1) == 48
    (tmp_path / "b.py").write_text("y = 3\n")
    assert measure_files(files, tmp_path) != m1
    (tmp_path / "b.py").write_text("y = 2\n")
    assert measure_files(files, tmp_path) == m1
    (tmp_path / "b.py").rename(tmp_path / "c.py")
    assert measure_files(sorted(tmp_path.iterdir()), tmp_path) != m1
