"""Per-layer rules for per-example gradients: one module per layer family.

* ``linear.py`` — ``nn.Linear``, transformers ``Conv1D``
* ``embedding.py`` — ``nn.Embedding`` (padding_idx, broadcast position ids)
* ``normalization.py`` — ``nn.LayerNorm``, RMSNorm (recognised by structure)
* ``conv.py`` — ``nn.Conv1d``, ``nn.Conv2d``
* ``functional.py`` — any other module with parameters, through ``torch.func``
* ``registry.py`` — which rule applies to which module; BatchNorm is refused
"""

from privtune.rules.base import ModuleCall, Rule
from privtune.rules.registry import EXAMPLE_MIXING_TYPES, RuleRegistry, default_registry

__all__ = ["EXAMPLE_MIXING_TYPES", "ModuleCall", "Rule", "RuleRegistry", "default_registry"]
