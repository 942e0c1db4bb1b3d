"""Which parameters are fine-tuned: the methods compared in the paper's tables.

* ``full``: every parameter.
* ``lora``: low-rank adapters on the attention projections (peft; rank ``lora_rank``); the base model is
  frozen, a classification head stays trainable.
* ``top2``: only the last two transformer blocks (and a classification head).
* ``bias``: only bias vectors (BitFit), and a classification head.
* ``retrain``: every parameter, re-initialised: training from scratch, the baseline that shows what
  pretraining brings.

Frozen parameters take no part in the privacy engine's norms or updates.
"""

from __future__ import annotations

from torch import nn

from privtune.errors import PrivtuneError

METHODS: tuple[str, ...] = ("full", "lora", "top2", "bias", "retrain")
HEAD_NAMES: tuple[str, ...] = ("classifier", "score")


def _heads(model: nn.Module) -> list[nn.Module]:
    return [module for name, module in model.named_modules() if name.split(".")[-1] in HEAD_NAMES]


def _blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer's list of blocks: the longest ``nn.ModuleList`` in the model."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise PrivtuneError(f"{type(model).__name__} has no list of transformer blocks; use --method full or lora")
    return max(lists, key=len)


def apply_method(model: nn.Module, method: str, lora_rank: int = 8, lora_alpha: int = 16) -> nn.Module:
    """Set ``requires_grad`` for ``method`` and return the model to train (a peft wrapper for LoRA)."""
    if method not in METHODS:
        raise PrivtuneError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method in ("full", "retrain"):
        if method == "retrain":
            if not hasattr(model, "init_weights"):
                raise PrivtuneError(f"{type(model).__name__} cannot re-initialise its weights (no init_weights)")
            model.apply(model._init_weights)
            if hasattr(model, "tie_weights"):
                model.tie_weights()
        model.requires_grad_(True)
        return model
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        is_classifier = bool(_heads(model))
        config = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=0.0,
            task_type=TaskType.SEQ_CLS if is_classifier else TaskType.CAUSAL_LM,
        )
        return get_peft_model(model, config)
    model.requires_grad_(False)
    if method == "top2":
        for block in list(_blocks(model))[-2:]:
            block.requires_grad_(True)
    else:  # bias
        biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
        if not biases:
            raise PrivtuneError(f"{type(model).__name__} has no bias parameters; bias-only fine-tuning needs them")
        for param in biases:
            param.requires_grad_(True)
    for head in _heads(model):
        head.requires_grad_(True)
    return model


def is_head_parameter(name: str) -> bool:
    """Whether a parameter name belongs to a classification head (``classifier``/``score``, peft copies too)."""
    return any(part in HEAD_NAMES for part in name.split("."))


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied parameters counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
