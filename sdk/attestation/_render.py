"""Human and machine renderings of a parsed report (``svsm verify``, logs, tests)."""

from __future__ import annotations

from typing import Any

from ._report import AttestationReport

__all__ = ["report_to_dict", "report_table"]

_TCB_FIELDS = ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")


def report_to_dict(report: AttestationReport) -> dict[str, Any]:
    """A JSON-ready dict: integers stay integers, byte strings become lower-case hex,
    TCB fields also get their decoded parts under ``<field>_parts``.

    .. versionadded:: 0.1
    """
    out: dict[str, Any] = {}
    for name in report.__dataclass_fields__:
        if name == "raw":
            continue
        value = getattr(report, name)
        if isinstance(value, bytes):
            out[name] = value.hex()
        elif name in ("signature_r", "signature_s"):
            out[name] = f"{value:096x}"
        else:
            out[name] = value
    for name in _TCB_FIELDS:
        out[f"{name}_parts"] = report.tcb(name)._asdict()
    return out


def report_table(report: AttestationReport, title: str = "SEV-SNP attestation report") -> Any:
    """A :class:`rich.table.Table` of the report's fields (rich is imported lazily).

    .. versionadded:: 0.1
    """
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in report_to_dict(report).items():
        if isinstance(value, dict):
            value = " ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, int) and name not in ("version", "vmpl", "guest_svn"):
            value = f"{value:#x}"
        table.add_row(name, str(value))
    return table
