"""Fine-tuning methods: which parameters train, and that the engine stays exact with LoRA (peft)."""

import pytest
import torch
from bruteforce import check_all_modes
from hf_models import MODELS, examples

from privtune.errors import PrivtuneError
from privtune.methods import METHODS, apply_method, count_trainable


@pytest.mark.parametrize("name", ["gpt2-tied", "llama-untied", "bert-classifier"])
def test_lora_is_exact(name):
    torch.manual_seed(0)
    factory, loss_fn, num_labels = MODELS[name]
    model = apply_method(factory(), "lora", lora_rank=2)
    with torch.no_grad():  # peft initialises B = 0; make the adapters non-trivial
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, 0.1)
    trainable, total = count_trainable(model)
    assert 0 < trainable < total
    check_all_modes(model.double(), examples([5, 7, 4, 6], num_labels=num_labels), loss_fn, splits=(1,),
                    modes=[("flat", "auto", "bookkeeping"), ("per_layer", "ghost", "bookkeeping")])


@pytest.mark.parametrize("method", ["top2", "bias"])
def test_partial_methods_train_the_right_subset(method):
    from hf_models import bert

    model = apply_method(bert(layers=3), method)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("classifier") for n in names)
    if method == "top2":
        assert any("layer.1." in n for n in names) and any("layer.2." in n for n in names)
        assert not any("layer.0." in n for n in names)
        assert not any("embeddings" in n for n in names)
    else:
        assert all(n.endswith(".bias") or n.startswith("classifier") for n in names)


def test_bias_only_without_biases_is_a_clear_error():
    with pytest.raises(PrivtuneError, match="no bias parameters"):
        apply_method(MODELS["llama-untied"][0](), "bias")


def test_retrain_reinitialises():
    torch.manual_seed(0)
    model = MODELS["gpt2-tied"][0]()
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    torch.manual_seed(1)
    apply_method(model, "retrain")
    assert not torch.equal(before, model.transformer.h[0].attn.c_attn.weight)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_unknown_method():
    with pytest.raises(PrivtuneError, match="unknown method"):
        apply_method(MODELS["gpt2-tied"][0](), "dora")
    assert "lora" in METHODS
