"""Which rule computes the per-example gradients of which module.

A :class:`RuleRegistry` maps module types to rules (exact type first, then the nearest base class in the
module's MRO, as long as the subclass does not redefine ``forward``), then tries structural matchers (e.g. RMSNorm-shaped modules), and finally the generic
``torch.func`` rule. :func:`default_registry` returns a fresh registry holding the built-in rules, so a
user can add rules for their own layers without touching any global state::

    registry = default_registry()
    registry.register(MyLayer, my_rule)
    engine = PrivacyEngine(model, optimizer, ..., rules=registry)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from privtune.rules.base import Rule
from privtune.rules.conv import conv_rule
from privtune.rules.embedding import embedding_rule
from privtune.rules.functional import functional_rule
from privtune.rules.linear import conv1d_transformers_rule, linear_rule
from privtune.rules.normalization import layer_norm_rule, looks_like_rms_norm, rms_norm_rule

# Layers whose forward pass mixes the examples of a batch: no per-example gradient exists.
EXAMPLE_MIXING_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)


class RuleRegistry:
    """Module type -> rule, plus structural matchers, plus the ``torch.func`` fallback."""

    def __init__(self, fallback: Rule | None = functional_rule) -> None:
        self._by_type: dict[type[nn.Module], Rule] = {}
        self._matchers: list[tuple[Callable[[nn.Module], bool], Rule]] = []
        self.fallback = fallback

    def register(self, module_type: type[nn.Module], rule: Rule) -> None:
        """Use ``rule`` for ``module_type`` and its subclasses (unless a subclass has its own)."""
        self._by_type[module_type] = rule

    def register_matcher(self, predicate: Callable[[nn.Module], bool], rule: Rule) -> None:
        """Use ``rule`` for modules of unregistered types for which ``predicate(module)`` is true."""
        self._matchers.append((predicate, rule))

    def find(self, module: nn.Module) -> Rule | None:
        """The rule for ``module``. A rule registered for a base class applies to a subclass only if the
        subclass keeps the base class's ``forward``: a subclass that redefines it (OPT's learned positional
        embedding takes an attention mask, not token ids) may break the rule's assumptions."""
        for cls in type(module).__mro__:
            if cls in self._by_type:
                if type(module).forward is cls.forward:
                    return self._by_type[cls]
                break
        for predicate, rule in self._matchers:
            if predicate(module):
                return rule
        return self.fallback


def default_registry() -> RuleRegistry:
    """A new registry with privtune's built-in rules."""
    registry = RuleRegistry()
    registry.register(nn.Linear, linear_rule)
    registry.register(nn.Embedding, embedding_rule)
    registry.register(nn.LayerNorm, layer_norm_rule)
    registry.register(nn.Conv1d, conv_rule)
    registry.register(nn.Conv2d, conv_rule)
    if hasattr(nn, "RMSNorm"):
        registry.register(nn.RMSNorm, rms_norm_rule)
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is a dependency, but the engine itself does not need it
        pass
    else:
        registry.register(Conv1D, conv1d_transformers_rule)
    registry.register_matcher(looks_like_rms_norm, rms_norm_rule)
    return registry
