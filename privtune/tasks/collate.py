"""Turning task examples into model tensors: causal-LM pairs, generation prompts, classifier and infilling batches.

Conventions (shared by training and evaluation, so a model is scored on exactly what it was trained on):
- A prompt is tokenized with the tokenizer's own special tokens (a BOS where the tokenizer adds one); a
  completion is the rest of the tokenization of ``prompt + completion``, then the tokenizer's EOS id.
- Training batches are right-padded; ``labels`` are aligned with ``input_ids`` (Hugging Face models shift
  them inside) and are -100 on prompt and padding positions, so the loss is on completion tokens only.
- Generation prompts are left-padded, as ``model.generate`` needs for decoder-only models.
- Over-long examples lose prompt tokens from the left (the end of a prompt, next to the completion, matters
  most), keeping a leading BOS; a completion is cut on the right only if it alone would not fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from privtune.errors import PrivtuneError

IGNORE_INDEX = -100


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise PrivtuneError(
            f"tokenizer {type(tokenizer).__name__} has neither a pad nor an EOS token; set pad_token"
        )
    return int(pad)


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise PrivtuneError(
            f"tokenizer {type(tokenizer).__name__} has no end-of-sequence token: a causal-LM task needs one "
            "(is this an encoder's tokenizer?)"
        )
    return int(tokenizer.eos_token_id)


def _check_max_length(max_length: int | None) -> None:
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise PrivtuneError(f"max_length must be an integer >= 2 or None; got {max_length!r}")


def _keep_prompt_tail(tokenizer: Any, ids: list[int], keep: int) -> list[int]:
    """The last ``keep`` tokens of a prompt, keeping a leading BOS in front of them."""
    if len(ids) <= keep:
        return ids
    bos = tokenizer.bos_token_id
    if bos is not None and ids and ids[0] == bos and keep >= 2:
        return [ids[0], *ids[len(ids) - keep + 1 :]]
    return ids[len(ids) - keep :]


def _pad(rows: Sequence[Sequence[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` [batch, longest row] of token rows padded on one side."""
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(length - len(r), length) if left else slice(0, len(r))
        input_ids[i, span] = torch.tensor(list(r), dtype=torch.long)
        attention_mask[i, span] = 1
    return input_ids, attention_mask


def _prompt_ids(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    return [list(x) for x in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]


def split_prompt_completion(
    tokenizer: Any, prompts: Sequence[str], completions: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """Token ids of each (prompt, completion) pair, the completion ending with EOS.

    The completion's ids are what the tokenization of ``prompt + completion`` adds after the prompt's ids, so
    the model trains on natural tokenizations; if a merge crosses the boundary (the prompt's ids are not a
    prefix), the completion is tokenized on its own instead, so the prompt ids always equal generation's.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    eos = _eos_id(tokenizer)
    prompt_ids = _prompt_ids(tokenizer, prompts)
    full_ids = tokenizer([p + c for p, c in zip(prompts, completions)], add_special_tokens=True)["input_ids"]
    pairs = []
    for i, (p_ids, f_ids) in enumerate(zip(prompt_ids, full_ids)):
        f_ids = list(f_ids)
        if f_ids[: len(p_ids)] == p_ids:
            c_ids = f_ids[len(p_ids) :]
        else:
            c_ids = list(tokenizer(completions[i], add_special_tokens=False)["input_ids"])
        if c_ids and c_ids[-1] == eos:  # a tokenizer that appends EOS itself
            c_ids = c_ids[:-1]
        pairs.append((p_ids, [*c_ids, eos]))
    return pairs


def encode_causal_lm(
    tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """A right-padded causal-LM training batch with the loss on completions only.

    Returns ``input_ids`` and ``attention_mask`` (long, [batch, length]) and ``labels``: the input id on
    completion tokens (EOS included), -100 on prompt and padding tokens. At most ``max_length`` tokens each.
    """
    _check_max_length(max_length)
    pad = _pad_id(tokenizer)
    rows = []
    for p_ids, c_ids in split_prompt_completion(tokenizer, prompts, completions):
        if max_length is not None and len(p_ids) + len(c_ids) > max_length:
            keep = max(max_length - len(c_ids), min(len(p_ids), max_length // 2))
            p_ids = _keep_prompt_tail(tokenizer, p_ids, keep)
            c_ids = c_ids[: max_length - len(p_ids)]
        rows.append((p_ids, c_ids))
    input_ids, attention_mask = _pad([p + c for p, c in rows], pad)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for i, (p_ids, c_ids) in enumerate(rows):
        labels[i, len(p_ids) : len(p_ids) + len(c_ids)] = torch.tensor(c_ids, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Left-padded prompts for ``model.generate``: ``input_ids`` and ``attention_mask`` [batch, length].

    Tokenized and truncated as in :func:`encode_causal_lm`, so generation starts from the exact context the
    model was trained with. Generated tokens start at column ``input_ids.shape[1]`` of generate's output.
    """
    _check_max_length(max_length)
    pad = _pad_id(tokenizer)
    rows = _prompt_ids(tokenizer, prompts)
    if max_length is not None:
        rows = [_keep_prompt_tail(tokenizer, r, max_length) for r in rows]
    input_ids, attention_mask = _pad(rows, pad, left=True)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def decode_generated(tokenizer: Any, sequences: torch.Tensor, prompt_length: int) -> list[str]:
    """Texts generated after a left-padded prompt batch of width ``prompt_length``: cut at the first EOS,
    special tokens dropped, surrounding whitespace stripped."""
    eos = tokenizer.eos_token_id
    texts = []
    for row in sequences[:, prompt_length:].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts


def encode_classification(
    tokenizer: Any, examples: Sequence[Any], max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """A batch for a model with a classification head: the tokenizer's own encoding of ``text`` (and
    ``text_pair``), right-padded and truncated (longest first) to ``max_length`` or the model's limit, plus
    ``labels`` (long, [batch])."""
    _check_max_length(max_length)
    if not examples:
        raise ValueError("empty batch")
    has_pair = [e.text_pair is not None for e in examples]
    if any(has_pair) and not all(has_pair):
        raise ValueError("a batch mixes single texts and text pairs")
    pairs = [e.text_pair for e in examples] if all(has_pair) else None
    if tokenizer.pad_token_id is None:
        raise PrivtuneError(f"tokenizer {type(tokenizer).__name__} has no pad token; set tokenizer.pad_token")
    batch = tokenizer(
        [e.text for e in examples],
        pairs,
        padding=True,
        truncation=True,
        max_length=max_length,
        padding_side="right",
        return_tensors="pt",
    )
    out = dict(batch)
    out["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    return out


def label_token_ids(tokenizer: Any, label_words: Sequence[str]) -> list[int]:
    """The token id each label word is scored by, as it is tokenized after other text (so " great" gets the
    id of the word with its leading space).

    A word of several tokens is scored by its first token; their first tokens must differ, else
    PrivtuneError (choose other label words).
    """
    context = "a"
    base = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    ids = []
    for word in label_words:
        full = list(tokenizer(context + word, add_special_tokens=False)["input_ids"])
        tokens = (
            full[len(base) :]
            if full[: len(base)] == base
            else list(tokenizer(word, add_special_tokens=False)["input_ids"])
        )
        if not tokens:
            raise PrivtuneError(f"label word {word!r} is empty for tokenizer {type(tokenizer).__name__}")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise PrivtuneError(
            f"label words {list(label_words)} share their first token for this tokenizer ({ids}); "
            "choose label words whose first tokens differ"
        )
    return ids


def encode_infilling(
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[int],
    label_words: Sequence[str],
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """A text-infilling batch for a causal LM: the label is the word predicted right after the prompt.

    Returns right-padded ``input_ids`` and ``attention_mask`` of the prompts; ``score_positions`` [batch]: the
    position whose next-token logits score the label words (the prompt's last token); ``label_token_ids``
    [num_labels]: the vocabulary id of each label word; ``labels`` [batch]: the class index. The class
    logits are ``label_word_logits(model(...).logits, score_positions, label_token_ids)``.
    """
    _check_max_length(max_length)
    if len(prompts) != len(labels):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
    pad = _pad_id(tokenizer)
    word_ids = label_token_ids(tokenizer, label_words)
    rows = _prompt_ids(tokenizer, prompts)
    if max_length is not None:
        rows = [_keep_prompt_tail(tokenizer, r, max_length) for r in rows]
    input_ids, attention_mask = _pad(rows, pad)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "score_positions": torch.tensor([len(r) - 1 for r in rows], dtype=torch.long),
        "label_token_ids": torch.tensor(word_ids, dtype=torch.long),
        "labels": torch.tensor(list(labels), dtype=torch.long),
    }


def label_word_logits(
    logits: torch.Tensor, score_positions: torch.Tensor, label_token_ids: torch.Tensor
) -> torch.Tensor:
    """Class logits [batch, num_labels] from a causal LM's logits [batch, length, vocab]: the label words'
    next-token logits at each example's score position. Cross-entropy on them trains the infilling head."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, score_positions.to(logits.device)][:, label_token_ids.to(logits.device)]
