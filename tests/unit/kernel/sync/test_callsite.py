"""Call-site capture names the caller's code, innermost first."""

from __future__ import annotations

from svsm.kernel.sync import CallSite, capture_call_site


def _inner() -> CallSite:
    return capture_call_site(skip=0, depth=2)


def test_capture_names_caller_and_depth() -> None:
    site = _inner()
    assert [f.function for f in site] == ["_inner", "test_capture_names_caller_and_depth"]
    assert site[0].filename.endswith("test_callsite.py")
    assert "test_callsite.py" in site.format() and " <- " in str(site)


def test_exclude_prefix_drops_frames() -> None:
    site = capture_call_site(skip=0, depth=3, exclude=__file__)
    assert all(f.filename != __file__ for f in site)
    assert len(site) == 3


def test_empty_site_formats() -> None:
    assert "not recorded" in CallSite().format() and not CallSite()
