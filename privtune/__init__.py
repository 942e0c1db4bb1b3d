"""privtune: differentially private fine-tuning of language models.

The engine (:class:`PrivacyEngine`) clips every example's gradient exactly, with one backward pass; the
accounting (:mod:`privtune.accounting`), sampling (:mod:`privtune.sampling`) and plan
(:mod:`privtune.plan`) make the noise, the sampler and the privacy report agree.

Names are imported lazily, so ``privtune epsilon`` and ``import privtune.accounting`` do not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PrivacyEngine": "privtune.engine",
    "PrivacyError": "privtune.errors",
    "PrivtuneError": "privtune.errors",
    "UnsupportedModuleError": "privtune.errors",
    "RuleRegistry": "privtune.rules",
    "default_registry": "privtune.rules",
    "PrivacyPlan": "privtune.plan",
    "Ledger": "privtune.accounting",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'privtune' has no attribute {name!r}")
