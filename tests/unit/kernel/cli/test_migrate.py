"""``svsm migrate`` / ``svsm run --incoming`` / ``svsm migrate-demo``: options and one-line errors."""

from __future__ import annotations

import pytest

from svsm.kernel.cli import ExitCode, main
from svsm.kernel.cli._main import build_parser


@pytest.mark.parametrize("to", ["nohost", "h:0", "h:99999"])
def test_bad_destination_is_a_usage_error(to: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--to", to]) == ExitCode.USAGE
    assert capsys.readouterr().err.startswith("svsm: error:")


def test_unreachable_destination_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["migrate", "--to", f"127.0.0.1:{port}", "--memory", "16M", "--vcpus", "1", "--modules", "inprocess",
               "--warmup", "0", "--no-progress"])  # fmt: skip
    assert rc == ExitCode.USAGE and "cannot reach" in capsys.readouterr().err


def test_bad_measurement_allow_list_is_a_usage_error() -> None:
    from svsm.kernel.cli.migrate import _trust

    args = build_parser().parse_args(["migrate", "--to", "h:1", "--allow-measurement", "zz"])
    with pytest.raises(Exception) as exc:
        _trust(object(), args)
    assert type(exc.value).__name__ == "UsageError"


def test_the_cli_never_imports_the_engine_into_the_kernel() -> None:
    """Rule 7: the migrate module runs as a module (sandboxed), not through a side door."""
    import pathlib

    import svsm.kernel.cli.migrate as cli

    src = pathlib.Path(cli.__file__).read_text()
    assert "svsm.modules" not in src.replace('"svsm.modules"', "").replace("``svsm.modules``", "")
    assert "entry_points" not in src and "import_module" not in src


def test_parsers_expose_the_documented_options() -> None:
    p = build_parser()
    run = p.parse_args(["run", "--incoming", "0", "--listen", "169.254.1.1", "--port-file", "/tmp/x", "--after-steps", "3"])
    assert (run.incoming, run.listen, run.after_steps) == (0, "169.254.1.1", 3)
    mig = p.parse_args(["migrate", "--to", "h:1", "--json", "--max-rounds", "2", "--converge-pages", "9"])
    assert (mig.max_rounds, mig.converge_pages, mig.json) == (2, 9, True)
    demo = p.parse_args(["migrate-demo", "--memory", "32M"])
    assert demo.memory == "32M" and callable(demo.func)
