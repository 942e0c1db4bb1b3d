"""privtune: differentially private fine-tuning of language models.

The engine (:class:`PrivacyEngine`) clips every example's gradient exactly, with one backward pass; the
accounting (:mod:`privtune.accounting`), sampling (:mod:`privtune.sampling`) and plan
(:mod:`privtune.plan`) make the noise, the sampler and the privacy report agree.
"""

from privtune.engine import PrivacyEngine
from privtune.errors import PrivacyError, PrivtuneError, UnsupportedModuleError
from privtune.rules import RuleRegistry, default_registry

__all__ = [
    "PrivacyEngine",
    "PrivacyError",
    "PrivtuneError",
    "RuleRegistry",
    "UnsupportedModuleError",
    "default_registry",
]
__version__ = "0.1.0"
