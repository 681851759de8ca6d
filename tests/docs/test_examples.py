"""Run the documented examples, so that the docs cannot rot.

A fenced code block is executed when the line right before its opening fence is an HTML
comment ``<!-- run -->`` (invisible in rendered Markdown)::

    <!-- run -->
    ```python
    from svsm.kernel import boot
    ...
    ```

* ``python`` blocks run in a fresh interpreter (this one's ``sys.executable``).
* ``sh`` / ``bash`` / ``console`` / ``shell`` blocks run under ``bash -euo pipefail`` with the
  ``svsm`` console script's directory first on ``PATH``.
* The blocks of one page share a temporary working directory and run in page order, so a page
  can write files in one block (``svsm attest --out out``) and read them in the next.  The
  blocks run in a background thread (``SVSM_DOCS_JOBS=N``: N pages side by side) and each test
  waits for its block's result.
* Options go inside the comment: ``<!-- run rc=1 -->`` expects that exit status,
  ``<!-- run timeout=300 -->`` changes the 120 s limit, and ``<!-- run output=exact -->`` compares
  stdout with the ```` ```text ```` block that directly follows the example (for deterministic
  output only: digests and timings change with the code and the machine).
* The examples use the same simulated chip as the rest of the test suite (the per-user
  default, or ``SVSM_PSP_STATE_DIR`` if set): making a fresh chip costs seconds of RSA keygen.
* Budget: the whole set should stay under ~30 s; prefer small VMs (``vcpus=1, memory="32M"``).

Pages scanned: ``README.md`` and ``docs/**/*.md``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!--\s*run(?P<opts>(?:\s+\w+=\S+)*)\s*-->\s*$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w-]*)")
SHELLS = {"sh", "bash", "console", "shell"}
LANGS = SHELLS | {"python"}

@dataclasses.dataclass(frozen=True)
class Block:
    """One executable example."""

    page: pathlib.Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    rc: int = 0
    timeout: float = 120.0
    expected: str | None = None  # stdout, with output=exact

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def pages() -> list[pathlib.Path]:
    """The Markdown pages whose marked blocks are executed."""
    found = sorted((ROOT / "docs").rglob("*.md"))
    readme = ROOT / "README.md"
    return ([readme] if readme.exists() else []) + found


def extract(page: pathlib.Path) -> list[Block]:
    """The marked blocks of ``page``, in order.

    :raises ValueError: a marker not followed by a fence, an unknown option or language, or an
        unterminated block -- a broken marker must fail loudly, not silently skip an example.
    """
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if not m:
            if f := FENCE.match(lines[i]):  # skip a block that is not marked (markers inside it are text)
                i += 1
                while i < len(lines) and not lines[i].startswith(f["fence"]):
                    i += 1
            i += 1
            continue
        opts = dict(o.split("=", 1) for o in m["opts"].split())
        unknown = set(opts) - {"rc", "timeout", "output"}
        if unknown or opts.get("output", "exact") != "exact":
            raise ValueError(f"{page}:{i + 1}: unknown run option(s) in {m['opts'].strip()!r}")
        if i + 1 >= len(lines) or not (f := FENCE.match(lines[i + 1])):
            raise ValueError(f"{page}:{i + 1}: <!-- run --> must be directly followed by a fenced block")
        lang = f["lang"].lower()
        if lang not in LANGS:
            raise ValueError(f"{page}:{i + 2}: cannot run a {lang or 'plain'!r} block (use one of {sorted(LANGS)})")
        end = i + 2
        while end < len(lines) and not lines[end].startswith(f["fence"]):
            end += 1
        if end >= len(lines):
            raise ValueError(f"{page}:{i + 2}: unterminated code block")
        code = "\n".join(lines[i + 2 : end]) + "\n"
        expected = None
        if "output" in opts:
            start = end + 1
            if start >= len(lines) or lines[start].strip() != "```text":
                raise ValueError(f"{page}:{end + 1}: output=exact needs a ```text block right after the example")
            stop = start + 1
            while stop < len(lines) and lines[stop].strip() != "```":
                stop += 1
            if stop >= len(lines):
                raise ValueError(f"{page}:{start + 1}: unterminated output block")
            expected = "\n".join(lines[start + 1 : stop]) + "\n"
        blocks.append(Block(page, i + 2, lang, code, int(opts.get("rc", "0")), float(opts.get("timeout", "120")), expected))
        i = end + 1
    return blocks


def all_blocks() -> list[Block]:
    """Every marked block; a page with a broken marker is reported by test_markers_are_well_formed."""
    blocks = []
    for page in pages():
        try:
            blocks += extract(page)
        except ValueError:
            continue
    return blocks


@pytest.fixture(scope="session")
def docs_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the examples: the venv's scripts first, a fixed terminal width."""
    env = dict(os.environ)
    bindir = pathlib.Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SVSM_LOCKDEP", None)
    env["COLUMNS"] = "100"
    return env


def run_block(block: Block, cwd: pathlib.Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one block in ``cwd``; a timeout kills its process group (exit status -9, noted on stderr)."""
    if block.lang == "python":
        cmd = [sys.executable, "-c", block.code]
    else:
        cmd = [shutil.which("bash") or "bash", "-euo", "pipefail", "-c", block.code]
    # its own session, so that a timeout also kills what it started (module processes, servers)
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=block.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\ntimed out after {block.timeout} s"
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="session")
def results(request: pytest.FixtureRequest, docs_env: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, concurrent.futures.Future]:  # fmt: skip
    """Run every *selected* block in a background thread, each page's blocks in page order.

    ``SVSM_DOCS_JOBS=N`` runs up to N pages side by side (they are independent: each has its own
    working directory).  The default is 1: the examples boot VMs and start module processes,
    and on a small, busy machine parallel pages only make each block slower.
    """
    selected: dict[pathlib.Path, list[Block]] = {}
    for item in request.session.items:
        block = getattr(item, "callspec", None) and item.callspec.params.get("block")
        if isinstance(block, Block):
            selected.setdefault(block.page, []).append(block)
    futures: dict[str, concurrent.futures.Future] = {b.id: concurrent.futures.Future() for bs in selected.values() for b in bs}

    def run_page(blocks: list[Block]) -> None:
        cwd = tmp_path_factory.mktemp(blocks[0].page.stem)
        for block in sorted(blocks, key=lambda b: b.line):
            try:
                futures[block.id].set_result(run_block(block, cwd, docs_env))
            except BaseException as exc:  # noqa: BLE001 -- handed to the test that waits for it
                futures[block.id].set_exception(exc)

    jobs = int(os.environ.get("SVSM_DOCS_JOBS", "1"))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(jobs, len(selected) or 1)), thread_name_prefix="docs")
    for blocks in selected.values():
        pool.submit(run_page, blocks)
    yield futures
    pool.shutdown(wait=True)


def test_markers_are_well_formed() -> None:
    """Every marker parses (a typo would otherwise silently skip its example)."""
    for page in pages():
        extract(page)


@pytest.mark.slow
@pytest.mark.parametrize("block", all_blocks(), ids=lambda b: b.id)
def test_example(block: Block, results: dict[str, concurrent.futures.Future]) -> None:
    """One marked block: its exit status (and, with output=exact, its stdout) as documented."""
    proc = results[block.id].result()  # bounded: every block before it has its own timeout
    assert proc.returncode == block.rc, (
        f"{block.id} exited {proc.returncode}, expected {block.rc}\n"
        f"--- code\n{block.code}--- stdout\n{proc.stdout[-4000:]}--- stderr\n{proc.stderr[-4000:]}"
    )
    if block.expected is not None:
        assert proc.stdout == block.expected, f"{block.id}: stdout differs from the documented output"


def test_extract_rejects_broken_markers(tmp_path: pathlib.Path) -> None:
    """The extractor's own rules (no process started)."""
    good = tmp_path / "good.md"
    good.write_text("x\n<!-- run rc=1 -->\n```sh\nfalse\n```\n```python\nnot run\n```\n"
                    "<!-- run output=exact -->\n```sh\necho hi\n```\n```text\nhi\n```\n")
    (tmp_path / "quoted.md").write_text("````markdown\n<!-- run -->\n```sh\nfalse\n```\n````\n")
    assert extract(tmp_path / "quoted.md") == []
    b, c = extract(good)
    assert (b.lang, b.rc, b.line, b.code, b.expected) == ("sh", 1, 3, "false\n", None)
    assert (c.code, c.expected) == ("echo hi\n", "hi\n")
    for text in ("<!-- run -->\n\n```sh\ntrue\n```\n", "<!-- run -->\n```text\nx\n```\n",
                 "<!-- run foo=1 -->\n```sh\ntrue\n```\n", "<!-- run -->\n```sh\ntrue\n",
                 "<!-- run output=exact -->\n```sh\necho\n```\n\n```text\n\n```\n"):  # fmt: skip
        bad = tmp_path / "bad.md"
        bad.write_text(text)
        with pytest.raises(ValueError):
            extract(bad)
