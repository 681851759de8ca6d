"""Drive a whole SNP launch through the PSP: start, one update per page of a plan, finish.

The writer callback is where memory meets the firmware: kernel/hw passes one that writes each
page into guest memory through the firmware-privileged API and sets its RMP entry (assigned
to the guest, validated, immutable during launch, VMSA bit for VMSA pages).  Without a writer
only the measurement and the secrets page are kept -- enough for ``svsm measure``-style
tools and for tests of the PSP alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from ._firmware import GuestContext, SnpFirmware
from ._measure import LaunchUpdate, PageType

__all__ = ["LaunchResult", "PageWriter", "launch"]

PAGE_SIZE = 4096

#: ``write(page_type, gpa, data)``: place ``data`` (whole pages) at ``gpa``; for VMSA pages
#: ``vcpu`` says whose it is.
PageWriter = Callable[[PageType, int, bytes, "int | None"], None]


@dataclasses.dataclass(frozen=True, slots=True)
class LaunchResult:
    """What a finished launch leaves behind."""

    ctx: GuestContext
    measurement: bytes
    secrets_gpa: int | None
    #: The secrets page the PSP wrote (VMPCKs); the SVSM reads it from guest memory too.
    secrets_page: bytes | None


def launch(
    fw: SnpFirmware,
    plan: Iterable[LaunchUpdate],
    *,
    write: PageWriter | None = None,
    policy: int = 0x30000,
    host_data: bytes = bytes(32),
    id_block: bytes | None = None,
    id_auth: bytes | None = None,
) -> LaunchResult:
    """SNP_LAUNCH_START, SNP_LAUNCH_UPDATE for every page of ``plan``, SNP_LAUNCH_FINISH.

    :param plan: from :func:`launch_plan` (or any list of updates, e.g. an SVSM image's).
    :param write: receives every page the firmware places (see :data:`PageWriter`).
    :param id_block: with ``id_auth``: the guest owner's signed ID block for LAUNCH_FINISH.
    :raises PspError: a firmware command failed; the context is unusable.
    """
    ctx = fw.launch_start(policy)
    secrets_gpa = secrets = None
    for u in plan:
        if u.page_type is PageType.NORMAL:
            assert u.data is not None
            fw.launch_update_normal(ctx, u.gpa, u.data)
            if write is not None:
                write(PageType.NORMAL, u.gpa, u.data, None)
            continue
        if u.page_type is PageType.VMSA:
            page = fw.launch_update(ctx, PageType.VMSA, u.gpa, u.data)
            if write is not None:
                write(PageType.VMSA, u.gpa, page, u.vcpu)
            continue
        for gpa in range(u.gpa, u.gpa + u.size, PAGE_SIZE):
            page = fw.launch_update(ctx, u.page_type, gpa)
            if u.page_type is PageType.SECRETS:
                secrets_gpa, secrets = gpa, page
            if write is not None:
                write(u.page_type, gpa, page, None)
    measurement = fw.launch_finish(ctx, host_data=host_data, id_block=id_block, id_auth=id_auth)
    return LaunchResult(ctx=ctx, measurement=measurement, secrets_gpa=secrets_gpa, secrets_page=secrets)
