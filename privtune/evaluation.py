"""Task metrics of a model on an evaluation split: accuracy for classification; BLEU and ROUGE-L (E2E) or
token F1 (dialogue) of generated text, and perplexity of the references, for generation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from privtune import metrics
from privtune.losses import causal_lm_losses
from privtune.tasks import ClassificationTask
from privtune.tasks.collate import decode_generated, label_word_logits


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokenizer: Any,
    task: Any,
    examples: list[Any],
    config: Any,
    progress: bool = False,
    samples_path: Path | None = None,
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``examples`` (``config``: a resolved TrainConfig)."""
    was_training = model.training
    model.eval()
    try:
        if isinstance(task, ClassificationTask):
            return _classification(model, tokenizer, task, examples, config, progress)
        return _generation(model, tokenizer, task, examples, config, progress, samples_path)
    finally:
        model.train(was_training)


def _classification(model: nn.Module, tokenizer: Any, task: Any, examples: list[Any], config: Any,
                    progress: bool) -> dict[str, float]:
    predictions: list[int] = []
    labels: list[int] = []
    batches = _chunks(examples, max(8, 2 * config.micro_batch_size))
    for chunk in tqdm(batches, desc="eval", disable=not progress, leave=False):
        batch = task.collate(tokenizer, chunk, config.max_length, mode=config.classifier_mode)
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = model(**inputs).logits
        if config.classifier_mode == "infilling":
            logits = label_word_logits(logits, batch["score_positions"], batch["label_token_ids"])
        predictions += logits.argmax(-1).tolist()
        labels += batch["labels"].tolist()
    return {"accuracy": metrics.accuracy(predictions, labels)}


def _generation(model: nn.Module, tokenizer: Any, task: Any, examples: list[Any], config: Any, progress: bool,
                samples_path: Path | None) -> dict[str, float]:
    nll, tokens = 0.0, 0
    hypotheses: list[str] = []
    batches = _chunks(examples, max(4, config.micro_batch_size))
    for chunk in tqdm(batches, desc="eval", disable=not progress, leave=False):
        batch = task.collate(tokenizer, chunk, config.max_length)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        counts = (batch["labels"][:, 1:] != -100).sum(1)
        nll += float((causal_lm_losses(logits, batch["labels"], reduction="sum")).sum())
        tokens += int(counts.sum())
        prompts = task.collate_prompts(tokenizer, chunk, config.max_length)
        generated = model.generate(
            **prompts,
            max_new_tokens=config.max_new_tokens,
            num_beams=config.num_beams,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        hypotheses += decode_generated(tokenizer, generated, prompts["input_ids"].shape[1])
    references = [list(e.references) for e in examples]
    result = {"perplexity": math.exp(nll / max(tokens, 1))}
    if task.name == "dialog":
        result["f1"] = metrics.token_f1(hypotheses, references)
    else:
        result["bleu"] = metrics.bleu(hypotheses, references)
        result["rouge_l"] = metrics.rouge_l(hypotheses, references)
    if samples_path is not None:
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        with open(samples_path, "w") as handle:
            for example, hypothesis in zip(examples, hypotheses):
                handle.write(json.dumps({"source": example.source, "generated": hypothesis,
                                         "references": list(example.references)}) + "\n")
    return result
