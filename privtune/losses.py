"""Per-example losses: the engine needs one loss per example, reduced over tokens only.

Positions labelled ``-100`` (padding, prompt tokens) contribute nothing, as in Hugging Face models.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def causal_lm_losses(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Next-token cross-entropy per example. ``logits``: (B, T, V); ``labels``: (B, T), aligned with the
    inputs (shifted here). ``reduction`` over an example's target tokens: ``"mean"`` or ``"sum"``."""
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    token_losses = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    summed = token_losses.sum(1)
    if reduction == "sum":
        return summed
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    counts = (shift_labels != IGNORE_INDEX).sum(1).clamp(min=1)
    return summed / counts.to(summed.dtype)


def classification_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy per example for (B, C) logits and (B,) integer labels."""
    return F.cross_entropy(logits, labels, reduction="none")


def sequence_log_likelihoods(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum of next-token log-probabilities of the labelled positions, per example (for scoring)."""
    return -causal_lm_losses(logits, labels, reduction="sum")


__all__ = ["IGNORE_INDEX", "causal_lm_losses", "classification_losses", "sequence_log_likelihoods"]
