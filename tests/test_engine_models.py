"""Whole Hugging Face models (tiny random configs): the engine's update equals the brute-force loop's, for
every clipping rule x norm method x clipped-sum mode, uneven micro-batches, padded examples of different
lengths, tied and untied embeddings, and a frozen subset of parameters."""

import pytest
import torch
from bruteforce import ENGINE_MODES, check_all_modes
from hf_models import MODELS, MORE_MODELS, examples


@pytest.mark.parametrize("name", list(MODELS))
def test_model_all_modes(name):
    torch.manual_seed(0)
    factory, loss_fn, num_labels = MODELS[name]
    model = factory()
    data = examples([5, 9, 3, 7, 6, 4], num_labels=num_labels)
    check_all_modes(model, data, loss_fn, splits=(1, 4))


@pytest.mark.parametrize("name", list(MORE_MODELS))
def test_more_architectures(name):
    """Qwen2, Mistral, Gemma, Phi, GPT-NeoX, BLOOM, GPT-BigCode (multi-query attention), DistilBERT, ELECTRA
    (an embedding projection): the default mode and ghost clipping's second backward, uneven micro-batches."""
    torch.manual_seed(0)
    factory, loss_fn, num_labels = MORE_MODELS[name]
    data = examples([5, 9, 3, 7], num_labels=num_labels)
    modes = [m for m in ENGINE_MODES if m in (("flat", "auto", "bookkeeping"), ("flat", "ghost", "second_backward"))]
    assert len(modes) == 2
    check_all_modes(factory(), data, loss_fn, splits=(1, 3), modes=modes)


def test_tied_weights_are_really_tied_in_these_configs():
    gpt2, llama_tied, llama_untied = (MODELS[n][0]() for n in ("gpt2-tied", "llama-tied", "llama-untied"))
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    assert llama_tied.lm_head.weight is llama_tied.model.embed_tokens.weight
    assert llama_untied.lm_head.weight is not llama_untied.model.embed_tokens.weight


@pytest.mark.parametrize("name", ["gpt2-tied", "llama-tied", "bert-classifier"])
def test_frozen_subset(name):
    """Freeze embeddings and the lower block: frozen parameters take no part in norms or updates."""
    torch.manual_seed(1)
    factory, loss_fn, num_labels = MODELS[name]
    model = factory()
    for param_name, param in model.named_parameters():
        if "embed" in param_name or "wte" in param_name or ".0." in param_name:
            param.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and any(p.requires_grad for p in model.parameters())
    data = examples([4, 8, 6, 5], num_labels=num_labels, seed=1)
    check_all_modes(model, data, loss_fn, splits=(3,), modes=[m for m in ENGINE_MODES if m[1] == "auto"])
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n])
