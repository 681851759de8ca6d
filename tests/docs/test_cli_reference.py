"""docs/cli.md's option tables are generated from the parser; fail when they are stale."""

from __future__ import annotations

import importlib.util
import pathlib
import types

HERE = pathlib.Path(__file__).resolve().parent


def _gen() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("svsm_docs_gen_cli", HERE / "gen_cli.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_is_current() -> None:
    gen = _gen()
    text = gen.PAGE.read_text(encoding="utf-8")
    assert gen.render(text) == text, "docs/cli.md is stale: run `python tests/docs/gen_cli.py`"


def test_every_subcommand_is_documented() -> None:
    from svsm.kernel.cli._main import build_parser

    gen = _gen()
    text = gen.PAGE.read_text(encoding="utf-8")
    for name, _, sub in gen._subparsers(build_parser()):
        assert f"`svsm {name}`" in text
        for inner, _, _ in gen._subparsers(sub):
            assert f"`svsm {name} {inner}`" in text
