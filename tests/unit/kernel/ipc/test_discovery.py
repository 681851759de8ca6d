"""Discovery through entry points: loading, block-list, hook validation, measurement."""

from __future__ import annotations

import pathlib
import textwrap
import pytest

from svsm.kernel.ipc import BLOCK_ENV, Policy, discover, measure_object

GOOD = '''
from svsm.sdk import Manifest, hookimpl
MANIFEST = Manifest(name="{name}", version="2.0")
@hookimpl
def svsm_module_start(ctx):
    pass
'''
MISSPELT = '''
from svsm.sdk import Manifest, hookimpl
MANIFEST = Manifest(name="typo", version="1")
@hookimpl
def svsm_handle_requets(request):
    pass
'''


def _install(root: pathlib.Path, dist: str, modules: dict[str, str]) -> None:
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    eps = "\n".join(f"{name} = {name}_pkg" for name in modules)
    (info / "entry_points.txt").write_text(f"[svsm.modules]\n{eps}\n")
    for name, src in modules.items():
        (root / f"{name}_pkg.py").write_text(textwrap.dedent(src))


@pytest.fixture
def installed(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    _install(tmp_path, "fakemods", {"alpha": GOOD.format(name="alpha"), "typo": MISSPELT})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(BLOCK_ENV, "tpm,persist,migrate")
    return tmp_path


def test_discovers_validates_and_measures(installed: pathlib.Path) -> None:
    found, skipped = discover()
    assert [s.name for s in found] == ["alpha"]
    spec = found[0]
    assert spec.manifest.version == "2.0" and spec.ref.kind == "import" and spec.ref.target == "alpha_pkg"
    assert spec.measurement == measure_object(spec.obj)
    assert "svsm_handle_requets" in skipped["typo"]  # a misspelt hook fails at discovery
    assert skipped["tpm"] == "blocked"


def test_block_list_and_policy(installed: pathlib.Path) -> None:
    found, skipped = discover(blocked=["alpha"])
    assert found == [] and skipped["alpha"] == "blocked"
    found, skipped = discover(policy=Policy(deny_modules=["alpha"]))
    assert found == [] and skipped["alpha"] == "denied by policy"


def test_measurement_follows_the_code(installed: pathlib.Path) -> None:
    (first,), _ = discover()
    (installed / "alpha_pkg.py").write_text(GOOD.format(name="alpha") + "# changed\n")
    import importlib
    import sys

    sys.modules.pop("alpha_pkg", None)
    importlib.invalidate_caches()
    (second,), _ = discover()
    assert first.measurement != second.measurement


def test_policy_grants_requested_minus_denied() -> None:
    from svsm.sdk import Manifest

    m = Manifest(name="x", version="1", capabilities=["log", "disk", "attest"])
    assert Policy(deny_capabilities={"x": ["disk"], "*": ["attest"]}).grant(m) == {"log"}
    assert Policy().grant(m, builtin=True) == {"log", "disk", "attest"}
    # privileged capabilities only for built-in modules and those the policy names
    assert Policy().grant(m) == {"log"}
    assert Policy(privileged_modules=["x"]).grant(m) == {"log", "disk", "attest"}
    svc = Manifest(name="y", version="1", services=["vm"])
    assert Policy().grant(svc) == frozenset() and Policy().grant(svc, builtin=True) == {"svc:vm"}


def test_load_policy_rejects_unknown_fields(tmp_path: pathlib.Path) -> None:
    from svsm.kernel.ipc import load_policy
    from svsm.sdk import InvalidFormat

    p = tmp_path / "p.json"
    p.write_text('{"deny_module": ["x"]}')
    with pytest.raises(InvalidFormat):
        load_policy(p)
    p.write_text('{"deny_modules": ["x"]}')
    assert load_policy(p).deny_modules == ["x"]
