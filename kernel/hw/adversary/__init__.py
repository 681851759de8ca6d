"""svsm.kernel.hw.adversary -- hazardous: a malicious hypervisor for adversarial tests.

No default code path imports this package.

.. versionadded:: 0.1
"""

from ._hypervisor import AdversarialHypervisor as AdversarialHypervisor

__all__ = ["AdversarialHypervisor"]
