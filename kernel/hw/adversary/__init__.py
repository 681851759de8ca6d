"""svsm.kernel.hw.adversary -- hazardous: a malicious hypervisor for adversarial tests.

No default code path imports this package.
"""

from ._hypervisor import AdversarialHypervisor as AdversarialHypervisor

__all__ = ["AdversarialHypervisor"]
