"""docs/abi.md is current, and the ABI only evolved compatibly since the 1.0 snapshot."""

from __future__ import annotations

import json
import pathlib

import msgspec

from svsm.kernel.ipc._abidoc import render, snapshot
from svsm.sdk.abi import _messages as m

ROOT = pathlib.Path(__file__).resolve().parents[4]
BASELINE = pathlib.Path(__file__).with_name("abi_v1_snapshot.json")


def test_docs_abi_md_is_current() -> None:
    assert (ROOT / "docs" / "abi.md").read_text() == render(), "regenerate: python -m svsm.kernel.ipc._abidoc > docs/abi.md"


def test_only_compatible_evolution_since_baseline() -> None:
    old = json.loads(BASELINE.read_text())
    new = snapshot()
    for tag, fields in old.items():
        assert tag in new, f"message {tag} removed (tags are never retired silently)"
        assert new[tag][: len(fields)] == fields, f"{tag}: a field was reordered, renamed or retyped"
    structs = {f"k:{c.__struct_config__.tag}": c for c in m.KERNEL_MESSAGES}
    structs.update({f"m:{c.__struct_config__.tag}": c for c in m.MODULE_MESSAGES})
    for tag, fields in new.items():
        added = {f[0] for f in fields[len(old.get(tag, [])) :]}
        if tag in old:
            for f in msgspec.structs.fields(structs[tag]):
                if f.name in added:
                    assert f.required is False, f"{tag}.{f.name} was added without a default"


def test_tags_unique_and_explicit() -> None:
    for classes in (m.KERNEL_MESSAGES, m.MODULE_MESSAGES):
        tags = [c.__struct_config__.tag for c in classes]
        assert len(set(tags)) == len(tags)
        assert all(t != c.__name__ for t, c in zip(tags, classes))  # never the default class name
