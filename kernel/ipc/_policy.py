"""Which modules may run and with which capabilities (default: what the manifest asks, minus denials)."""

from __future__ import annotations

import os
import pathlib
from typing import Annotated

import msgspec

from svsm.sdk import InvalidFormat, Manifest

__all__ = ["Policy", "PRIVILEGED_CAPABILITIES", "is_privileged", "load_policy", "blocked_from_env", "BLOCK_ENV"]

#: Capabilities that reach beyond the module's own state: other modules' storage, the host disk,
#: VMPL0 attestation reports, and every kernel service (``svc:<name>``).  Granted only to built-in
#: modules (code under ``svsm.modules``) and to modules the policy lists in ``privileged_modules``.
PRIVILEGED_CAPABILITIES = frozenset({"serve_storage", "disk", "attest"})


def is_privileged(capability: str) -> bool:
    """True for a capability only built-in or policy-listed modules receive."""
    return capability in PRIVILEGED_CAPABILITIES or capability.startswith("svc:")

#: Comma-separated module names that discovery skips (like tox's plugin block-list).
BLOCK_ENV = "SVSM_BLOCK_MODULES"

_Name = Annotated[str, msgspec.Meta(max_length=64)]


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The kernel's module policy (JSON file).

    :param deny_modules: modules that never start.
    :param deny_capabilities: per module name (``"*"`` for all), capabilities never granted
        (a kernel service is ``"svc:<service>"``).
    :param request_timeout_cap: upper bound on any module's ``request_timeout`` (seconds).
    :param address_space: RLIMIT_AS of each module process, bytes.
    :param cpu_seconds: RLIMIT_CPU of each module process.
    :param open_files: RLIMIT_NOFILE of each module process.
    :param speculation_mitigations: ``False`` trades Spectre hardening of module processes for
        faster calls (seccomp ``SPEC_ALLOW``; reported as ``seccomp(spec-allow)``).
    :param privileged_modules: modules besides the built-in ones (code under ``svsm.modules``) that may
        receive :data:`PRIVILEGED_CAPABILITIES` and kernel services; any other module runs without them.
    """

    deny_modules: list[_Name] = []
    deny_capabilities: dict[_Name, list[_Name]] = {}
    request_timeout_cap: float = 60.0
    address_space: int = 1 << 30
    cpu_seconds: int = 600
    open_files: int = 64
    #: keep the kernel's speculative-execution mitigations for seccomp-filtered modules (slower calls).
    speculation_mitigations: bool = True
    privileged_modules: list[_Name] = []

    def allows(self, name: str) -> bool:
        """False if policy denies module ``name``."""
        return name not in self.deny_modules

    def grant(self, manifest: Manifest, *, builtin: bool = False) -> frozenset[str]:
        """Capabilities granted to ``manifest``: requested minus denied, minus privileged ones
        unless the module is trusted with them (``builtin``: shipped with pysvsm, or run in-process,
        where its code already has the kernel's rights) or listed in :attr:`privileged_modules`."""
        denied = set(self.deny_capabilities.get("*", ())) | set(self.deny_capabilities.get(manifest.name, ()))
        requested = {str(getattr(c, "value", c)) for c in manifest.capabilities}
        requested.update(f"svc:{name}" for name in getattr(manifest, "services", ()))
        if not builtin and manifest.name not in self.privileged_modules:
            denied.update(c for c in requested if is_privileged(c))
        return frozenset(requested) - denied


def load_policy(path: str | os.PathLike[str] | None) -> Policy:
    """Read a policy file (JSON); ``None`` is the default policy.

    :raises InvalidFormat: unreadable or invalid file.
    """
    if path is None:
        return Policy()
    try:
        return msgspec.json.decode(pathlib.Path(path).read_bytes(), type=Policy)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidFormat(f"bad module policy {path}: {exc}") from None


def blocked_from_env(environ: dict[str, str] | None = None) -> frozenset[str]:
    """Module names blocked by :data:`BLOCK_ENV`."""
    env = os.environ if environ is None else environ
    return frozenset(n.strip() for n in env.get(BLOCK_ENV, "").split(",") if n.strip())
