"""Relative links between the docs point at files and headings that exist.

Anchors follow GitHub's slugs (lower case, punctuation dropped, spaces -> hyphens, ``-1``
suffixes for repeated headings).  Pages that other owners have not written yet are listed in
``PENDING``; a link to one of them is accepted until the page exists, then checked normally.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: Pages linked from the docs that their owners have not written yet.
PENDING: set[str] = set()
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^(```+|~~~+)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading text."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _prose(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and line.startswith(fence):
            fence = None
        elif fence is None:
            out.append((n, line))
    return out


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, line in _prose(path):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            result.add(base if n == 0 else f"{base}-{n}")
    return result


def pages() -> list[pathlib.Path]:
    return sorted(DOCS.rglob("*.md")) + [p for p in [ROOT / "README.md"] if p.exists()]


def broken_links(page: pathlib.Path) -> list[str]:
    """Relative links of ``page`` whose file or heading does not exist."""
    problems = []
    for n, line in _prose(page):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
            if not dest.exists():
                if rel not in PENDING:
                    problems.append(f"{page.name}:{n}: {target}: no such file")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{page.name}:{n}: {target}: no heading with that anchor")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: pathlib.Path) -> None:
    problems = broken_links(page)
    assert not problems, "\n".join(problems)


def test_broken_links_are_found(tmp_path: pathlib.Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Top\n[ok](#top) [bad](#nope) [gone](missing.md) `[code](x.md)`\n"
                    "```\n[in a fence](fenced.md)\n```\n[web](https://example.com/x.md)\n")
    assert [p.split(": ", 2)[1] for p in broken_links(page)] == ["#nope", "missing.md"]


def test_slug_matches_github() -> None:
    assert slug("Attest and verify: `svsm attest`, `svsm verify`") == "attest-and-verify-svsm-attest-svsm-verify"
    assert slug("Verifying with `svsm.sdk.attestation`") == "verifying-with-svsmsdkattestation"
    assert slug("DEPOSIT_MEM / WITHDRAW_MEM (pysvsm's format)") == "deposit_mem--withdraw_mem-pysvsms-format"
