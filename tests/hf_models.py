"""Tiny random-initialised configurations of real Hugging Face architectures, and their per-example losses."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import transformers as tf
from torch import Tensor, nn

from privtune.losses import causal_lm_losses, classification_losses

VOCAB = 61


def _finish(model: nn.Module) -> nn.Module:
    model.config._attn_implementation = "eager"
    return model.double().train()


def gpt2() -> nn.Module:
    cfg = tf.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=32, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return _finish(tf.GPT2LMHeadModel(cfg))


def llama(tied: bool) -> nn.Module:
    cfg = tf.LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32,
                         tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return _finish(tf.LlamaForCausalLM(cfg))


def opt() -> nn.Module:
    cfg = tf.OPTConfig(hidden_size=16, ffn_dim=24, num_hidden_layers=2, num_attention_heads=2, vocab_size=VOCAB,
                       word_embed_proj_dim=16, max_position_embeddings=32, dropout=0.0, attention_dropout=0.0,
                       bos_token_id=0, eos_token_id=0, pad_token_id=1)
    return _finish(tf.OPTForCausalLM(cfg))


def bert(layers: int = 2) -> nn.Module:
    cfg = tf.BertConfig(hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=24,
                        vocab_size=VOCAB, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=3, pad_token_id=0)
    return _finish(tf.BertForSequenceClassification(cfg))


def roberta() -> nn.Module:
    cfg = tf.RobertaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                           vocab_size=VOCAB, max_position_embeddings=40, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, num_labels=2, pad_token_id=1)
    return _finish(tf.RobertaForSequenceClassification(cfg))


def _pad(batch: Sequence[tuple[Tensor, int]], pad_id: int) -> tuple[Tensor, Tensor]:
    length = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (tokens, _) in enumerate(batch):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return ids, mask


def lm_loss_fn(pad_id: int, prompt_length: int = 2) -> Callable[[nn.Module, Sequence], Tensor]:
    """Right-padded causal LM batch; the first ``prompt_length`` tokens and the padding are labelled -100."""

    def loss_fn(model: nn.Module, batch: Sequence[tuple[Tensor, int]]) -> Tensor:
        ids, mask = _pad(batch, pad_id)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :prompt_length] = -100
        logits = model(input_ids=ids, attention_mask=mask).logits
        return causal_lm_losses(logits, labels)

    return loss_fn


def classifier_loss_fn(pad_id: int) -> Callable[[nn.Module, Sequence], Tensor]:
    def loss_fn(model: nn.Module, batch: Sequence[tuple[Tensor, int]]) -> Tensor:
        ids, mask = _pad(batch, pad_id)
        labels = torch.tensor([label for _, label in batch])
        return classification_losses(model(input_ids=ids, attention_mask=mask).logits, labels)

    return loss_fn


def examples(lengths: Sequence[int], num_labels: int = 2, low: int = 2, seed: int = 0) -> list[tuple[Tensor, int]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for length in lengths:
        ids = torch.randint(low, VOCAB, (length,), generator=gen)
        out.append((ids, int(torch.randint(0, num_labels, (1,), generator=gen))))
    return out


def _decoder_config(**overrides):
    base = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
                max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    base.update(overrides)
    return base


# More architectures, beyond those the engine issue names: the engine must be right for the general case.
# name -> (model factory, loss function, number of labels)
MORE_MODELS = {
    "qwen2": (lambda: _finish(tf.Qwen2ForCausalLM(tf.Qwen2Config(**_decoder_config(num_key_value_heads=2)))),
              lm_loss_fn(0), 2),
    "mistral": (lambda: _finish(tf.MistralForCausalLM(tf.MistralConfig(**_decoder_config(num_key_value_heads=2)))),
                lm_loss_fn(0), 2),
    "gemma": (lambda: _finish(tf.GemmaForCausalLM(tf.GemmaConfig(**_decoder_config(num_key_value_heads=2,
                                                                                    head_dim=4)))),
              lm_loss_fn(0), 2),
    "phi": (lambda: _finish(tf.PhiForCausalLM(tf.PhiConfig(**_decoder_config(resid_pdrop=0.0, embd_pdrop=0.0,
                                                                             attention_dropout=0.0)))),
            lm_loss_fn(0), 2),
    "gpt-neox": (lambda: _finish(tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**_decoder_config(hidden_dropout=0.0,
                                                                                          attention_dropout=0.0)))),
                 lm_loss_fn(0), 2),
    "bloom": (lambda: _finish(tf.BloomForCausalLM(tf.BloomConfig(hidden_size=16, n_layer=2, n_head=4, vocab_size=VOCAB,
                                                                 hidden_dropout=0.0, attention_dropout=0.0,
                                                                 bos_token_id=0, eos_token_id=0, pad_token_id=0))),
              lm_loss_fn(0), 2),
    "gpt-bigcode": (lambda: _finish(tf.GPTBigCodeForCausalLM(tf.GPTBigCodeConfig(
        n_embd=16, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))), lm_loss_fn(0), 2),
    "distilbert-classifier": (lambda: _finish(tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
        dim=16, hidden_dim=24, n_layers=2, n_heads=2, vocab_size=VOCAB, max_position_embeddings=32, dropout=0.0,
        attention_dropout=0.0, seq_classif_dropout=0.0, num_labels=2, pad_token_id=0))), classifier_loss_fn(0), 2),
    "electra-classifier": (lambda: _finish(tf.ElectraForSequenceClassification(tf.ElectraConfig(
        embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        vocab_size=VOCAB, max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=2, pad_token_id=0))), classifier_loss_fn(0), 2),
}

# name -> (model factory, loss function, number of labels)
MODELS = {
    "gpt2-tied": (gpt2, lm_loss_fn(0), 2),
    "llama-tied": (lambda: llama(True), lm_loss_fn(0), 2),
    "llama-untied": (lambda: llama(False), lm_loss_fn(0), 2),
    "opt-tied": (opt, lm_loss_fn(1), 2),
    "bert-classifier": (bert, classifier_loss_fn(0), 3),
    "roberta-classifier": (roberta, classifier_loss_fn(1), 2),
}
