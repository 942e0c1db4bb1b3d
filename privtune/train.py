"""The training job behind ``privtune train``: one code path for private and non-private fine-tuning.

The privacy plan (:class:`~privtune.plan.PrivacyPlan`) hands the loop its sampler, noise multiplier and
ledger; the engine (:class:`~privtune.engine.PrivacyEngine`) clips and noises; the ledger records every
step actually taken, so the reported epsilon is the one spent, also after resuming or stopping early.
A non-private run uses the same Poisson sampler and the same logical batches, without clipping or noise.
"""

from __future__ import annotations

import dataclasses
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from privtune.accounting import Ledger
from privtune.engine import PrivacyEngine
from privtune.errors import DataError, PrivtuneError
from privtune.evaluation import evaluate
from privtune.losses import causal_lm_losses, classification_losses
from privtune.methods import apply_method, count_trainable, is_head_parameter
from privtune.plan import PrivacyPlan, count_steps
from privtune.runs import load_checkpoint, read_json, save_checkpoint, write_json
from privtune.sampling import PoissonSampler
from privtune.tasks import ClassificationTask, get_task
from privtune.tasks.collate import label_word_logits

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` in the run folder.

    ``None`` means "use the recipe default" (:func:`recipe_defaults`), resolved before training starts.
    """

    task: str = "sst2"
    model: str = "minilm-l6"
    method: str = "full"
    epsilon: float | None = 8.0
    delta: float | None = None
    non_private: bool = False
    epochs: float | None = None
    # Noisy steps instead of epochs: each step Poisson-samples from the whole training set, so a large data
    # set can be used at a small sample rate q = B/N (strong amplification) for as many steps as compute allows.
    steps: int | None = None
    batch_size: int | None = None
    micro_batch_size: int | None = None
    learning_rate: float | None = None
    # The new classification head's own learning rate (``classifier_mode="head"`` only); None: recipe default.
    head_learning_rate: float | None = None
    warmup_steps: int | None = None
    max_grad_norm: float | None = None
    clipping: str = "flat"
    accountant: str = "rdp"
    classifier_mode: str | None = None  # "head" | "infilling"; default: head for encoders, infilling for LMs
    # How a new classification head starts: "auto" | "zero" | "prompt" | "random" (privtune.models.load_model).
    head_init: str = "auto"
    train_limit: int | None = None
    eval_limit: int | None = None
    train_file: str | None = None
    eval_file: str | None = None
    on_bad_rows: str = "error"
    max_length: int | None = None
    num_beams: int = 1
    max_new_tokens: int = 48
    seed: int = 0
    # Batches and noise must be unpredictable to anyone who sees the config: by default they are seeded from
    # os.urandom (the seeds live only in the run folder, for resuming). False seeds them from ``seed``: for
    # tests and reproducibility studies, never for a release.
    secret_seeds: bool = True
    output_dir: str = "runs/latest"
    checkpoint_every: int = 20
    eval_before: bool = True
    lora_rank: int = 8
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from a mapping that may hold other keys too (a saved ``config.json``, parsed CLI options)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def recipe_defaults(config: TrainConfig, model_is_encoder: bool) -> TrainConfig:
    """Fill the ``None`` fields with what worked on this machine (``benchmarks/utility.py``; README, Results).

    Reasoning, after the paper and our measurements: a large logical batch lowers the effective noise
    sigma/q at fixed epsilon; with per-example clipping at a small threshold every example's update has the
    same norm, so DP-Adam's learning rate can be large *for few trained coordinates* (LoRA), while full
    fine-tuning needs a moderate one: DP-Adam moves every noise-dominated coordinate by about the learning rate
    at each step, which wrecked MiniLM at 2e-3. Encoder classifiers get the checkpoint's own pooling and a
    zero-initialised head (see :func:`privtune.models.load_model`); causal LMs classify by text infilling.
    """
    resolved = dataclasses.replace(config)
    generation = config.task in ("e2e", "dialog")
    few_coordinates = config.method in ("lora", "bias")
    if resolved.classifier_mode is None:
        # Encoders: a head on the checkpoint's sentence embedding; causal LMs: label words from their LM head.
        resolved.classifier_mode = "head" if model_is_encoder else "infilling"
    new_head = resolved.classifier_mode == "head" and not generation
    defaults: dict[str, Any] = {
        # 3 epochs (the paper's classification recipe); 2 for generation, whose examples cost ~10x more here.
        "epochs": None if config.steps is not None else 3.0 if not generation else 2.0,
        # Large logical batches lower sigma_eff = sigma/q; 256 keeps >= 30 steps per epoch at N = 8,000.
        "batch_size": 256 if not generation else 128,
        # Memory only (the logical batch is what the privacy analysis sees).
        "micro_batch_size": 32 if model_is_encoder else 8,
        # DP-Adam: LoRA/bias stable and fastest at 5e-3 (MiniLM, SST-2); full fine-tuning diverged at 2e-3.
        # With a new head, which has its own rate (below), the pretrained body only needs nudging: 5e-5.
        # Measured on MiniLM/SST-2 at epsilon 3 (head 3e-2): body 5e-5 65.3%, 2e-5 61.6%, 1e-5 67.9% - within
        # one run's noise of each other, and all far better than 5e-4 with one rate for head and body (53.1%).
        "learning_rate": 5e-3 if few_coordinates else 5e-5 if new_head else 5e-4,
        # Below the clipped norms of nearly all examples: the update averages directions (the paper's 0.1).
        "max_grad_norm": 0.1,
        # SST-2 sentences fit in 64 tokens; E2E's meaning representation and text in 128.
        "max_length": 64 if not generation else 128,
    }
    if config.non_private:
        # Without noise the usual fine-tuning rates: 1e-4 full, 1e-3 LoRA/bias (77% on SST-2 after 16 steps).
        defaults["learning_rate"] = 1e-3 if few_coordinates else 1e-4
    for name, value in defaults.items():
        if getattr(resolved, name) is None:
            setattr(resolved, name, value)
    if resolved.warmup_steps is None:
        # No warm-up: 3 steps of warm-up made no measurable difference in 16-step runs (52.9% vs 51.4%).
        resolved.warmup_steps = 0
    if resolved.head_learning_rate is None and new_head:
        # The head starts at zero and must travel far; the pretrained body must not. One rate for both either
        # under-trains the head (DP-Adam at 5e-3: LoRA 70.8% on SST-2 at epsilon 3) or lets the noise wreck
        # the body (5e-4 full: 53.1%). With the head at 3e-2: LoRA 79.2%, full (body 5e-5) 65.3%
        # (benchmarks/utility.py, 8,000 sentences, 1 epoch; README: Results).
        resolved.head_learning_rate = 1e-2 if config.non_private else 3e-2
    return resolved


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class LossFunction:
    """Per-example losses of a batch for the task's kind and classification mode (1-D, one per example)."""

    def __init__(self, task: Any, mode: str) -> None:
        self.task = task
        self.mode = mode

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = model(**inputs).logits
        if isinstance(self.task, ClassificationTask):
            if self.mode == "infilling":
                logits = label_word_logits(logits, batch["score_positions"], batch["label_token_ids"])
            return classification_losses(logits, batch["labels"])
        return causal_lm_losses(logits, batch["labels"])


def _collate(task: Any, tokenizer: Any, examples: list[Any], config: TrainConfig) -> dict[str, Tensor]:
    if isinstance(task, ClassificationTask):
        return task.collate(tokenizer, examples, config.max_length, mode=config.classifier_mode)
    return task.collate(tokenizer, examples, config.max_length)


def _scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the full learning rate, then constant (the paper's schedule for classification)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)) if warmup_steps > 0 else 1.0
    )


def _trainable_state(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train(config: TrainConfig, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the training job described by ``config``; returns the final metrics summary."""
    import transformers

    from privtune.models import model_architecture

    transformers.logging.set_verbosity_error()  # no load reports about the new classification head
    out = Path(config.output_dir)
    task = get_task(config.task)
    is_encoder = model_architecture(config.model) == "encoder"
    config = recipe_defaults(config, is_encoder)
    if config.epsilon is None and not config.non_private:
        raise PrivtuneError("give a privacy budget (--epsilon) or ask for --non-private explicitly")
    _check_resume(out, config)
    _seed_everything(config.seed)

    model, tokenizer = _build_model(config, task)
    model.train()
    _disable_dropout(model)
    trainable, total = count_trainable(model)

    train_set = task.load_split(task.train_split, config.train_limit, config.train_file, config.on_bad_rows)
    eval_set = task.load_split(task.eval_split, config.eval_limit, config.eval_file, config.on_bad_rows)
    n = len(train_set)
    if config.batch_size > n:
        raise DataError(
            f"the training set has {n} examples, fewer than one logical batch of {config.batch_size}: "
            "use a smaller --batch-size or more data"
        )
    optimizer = torch.optim.AdamW(_parameter_groups(model, config), lr=config.learning_rate, weight_decay=0.0)
    scheduler = _scheduler(optimizer, config.warmup_steps)
    loss_fn = LossFunction(task, config.classifier_mode or "head")

    plan: PrivacyPlan | None = None
    ledger: Ledger | None = None
    engine: PrivacyEngine | None = None
    if config.non_private:
        steps = count_steps(n, config.batch_size, epochs=config.epochs, steps=config.steps)
        sampler = PoissonSampler(n, config.batch_size / n, steps, config.micro_batch_size, config.seed)
        expected_batch = config.batch_size
    else:
        if (out / "plan.json").exists() and (out / CHECKPOINT).exists():
            plan = PrivacyPlan.load(out / "plan.json")  # resuming: the same sampler seed and sigma
        else:
            plan = PrivacyPlan.create(
                dataset_size=n, target_epsilon=config.epsilon, delta=config.delta, batch_size=config.batch_size,
                epochs=config.epochs, steps=config.steps, accountant=config.accountant,
                micro_batch_size=config.micro_batch_size,
                seed=None if config.secret_seeds else config.seed,
            )
        if plan.dataset_size != n:
            raise PrivtuneError(f"{out}/plan.json was made for {plan.dataset_size} examples, the data has {n}")
        sampler = plan.sampler()
        ledger = plan.new_ledger()
        noise_seed = secrets.randbits(63) if config.secret_seeds else config.seed + 1
        noise = torch.Generator().manual_seed(noise_seed)
        engine = PrivacyEngine(model, optimizer, max_grad_norm=config.max_grad_norm, clipping=config.clipping,
                               generator=noise, **plan.engine_kwargs(ledger))
        expected_batch = plan.expected_batch_size
        steps = plan.steps

    history: dict[str, list[Any]] = {"step": [], "loss": [], "epsilon": [], "seconds": []}
    metrics_before: dict[str, float] | None = None
    start_step = 0
    checkpoint_path = out / CHECKPOINT
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        _restore(state, model, optimizer, scheduler, engine)
        if ledger is not None:
            ledger = Ledger.from_dict(state["ledger"])
            engine.ledger = ledger  # type: ignore[union-attr]
        history, metrics_before, start_step = state["history"], state["metrics_before"], state["step"]
        log(f"resuming {out} at step {start_step}/{steps}")
    else:
        write_json(out / "config.json", config.to_dict())
        if plan is not None:
            write_json(out / "plan.json", plan.to_dict())
        if config.eval_before:
            metrics_before = evaluate(model, tokenizer, task, eval_set, config, progress=progress)
            log(f"before training: {_fmt(metrics_before)}")

    log(
        f"{config.task} / {config.model} / {config.method}: {trainable:,} of {total:,} parameters trained, "
        f"N={n}, batch {config.batch_size}, {steps} steps, "
        + ("non-private" if plan is None else
           f"sigma={plan.noise_multiplier:.3f} (sigma_eff=sigma/q={plan.sigma_eff:.1f}), C={config.max_grad_norm}, "
           f"target epsilon={config.epsilon} at delta={plan.delta:.2e}")
    )
    started = time.perf_counter()
    bar = tqdm(total=steps, initial=start_step, desc="train", disable=not progress, unit="step")
    try:
        for step, micro_batches in enumerate(sampler.iterate(start_step), start=start_step):
            losses_sum, count = 0.0, 0
            for micro in micro_batches:
                batch = _collate(task, tokenizer, [train_set[i] for i in micro], config)
                losses = loss_fn(model, batch)
                losses_sum += float(losses.detach().sum())
                count += len(micro)
                if engine is not None:
                    engine.backward(losses)
                else:
                    (losses.sum() / expected_batch).backward()
            if engine is not None:
                engine.step()
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            bar.update(1)
            done = step + 1
            if done % max(1, config.checkpoint_every // 4) == 0 or done == steps:
                history["step"].append(done)
                history["loss"].append(losses_sum / max(count, 1))
                history["epsilon"].append(ledger.epsilon(plan.delta, "rdp") if ledger is not None else None)
                history["seconds"].append(time.perf_counter() - started)
                bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
            if done % config.checkpoint_every == 0 and done < steps:
                _save(checkpoint_path, model, optimizer, scheduler, engine, ledger, history, metrics_before, done)
    finally:
        bar.close()
    if engine is not None:
        engine.detach()

    model.eval()
    metrics_after = evaluate(model, tokenizer, task, eval_set, config, progress=progress,
                             samples_path=out / "samples.jsonl")
    log(f"after training: {_fmt(metrics_after)}")
    privacy = _privacy_report(plan, ledger, config)
    summary = {
        "task": config.task, "model": config.model, "method": config.method,
        "non_private": config.non_private, "target_epsilon": None if config.non_private else config.epsilon,
        "train_examples": n, "eval_examples": len(eval_set), "steps": steps,
        "trainable_parameters": trainable, "total_parameters": total,
        "before": metrics_before, "after": metrics_after,
        "epsilon": privacy.get("spent", {}).get("epsilon") if plan is not None else None,
        "train_seconds": history["seconds"][-1] if history["seconds"] else None,
    }
    write_json(out / "history.json", history)
    write_json(out / "privacy.json", privacy)
    write_json(out / "metrics.json", summary)
    _save(checkpoint_path, model, optimizer, scheduler, engine, ledger, history, metrics_before, steps)
    from privtune.report import write_run_report

    write_run_report(out)
    return summary


def _build_model(config: TrainConfig, task: Any) -> tuple[nn.Module, Any]:
    """The model and tokenizer a (resolved) config trains: the task's model kind, then the method."""
    from privtune.models import load_model

    if isinstance(task, ClassificationTask):
        kind = "classification" if config.classifier_mode == "head" else "infilling"
        model, tokenizer = load_model(config.model, kind, num_labels=task.num_labels, seed=config.seed,
                                      head_init=config.head_init, label_prompts=task.label_prompts)
    else:
        model, tokenizer = load_model(config.model, "generation", seed=config.seed)
    return apply_method(model, config.method, lora_rank=config.lora_rank), tokenizer


def load_trainable(model: nn.Module, trainable: dict[str, Tensor], source: str | Path = "the checkpoint") -> None:
    """Copy a checkpoint's trained parameters (``checkpoint.pt``'s ``"trainable"``) into a freshly built model."""
    params = dict(model.named_parameters())
    unknown = sorted(set(trainable) - set(params))
    if unknown:
        raise PrivtuneError(f"{source} holds parameters this model does not have: {', '.join(unknown[:3])}")
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value)


def evaluate_run(
    run_dir: str | Path,
    *,
    eval_file: str | None = None,
    eval_limit: int | None = None,
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    on_bad_rows: str | None = None,
    name: str = "eval",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a finished run's model again, on other data or more of it (e.g. a larger test subset).

    The model is rebuilt from the run's ``config.json`` and its final ``checkpoint.pt``; the metrics go to
    ``<run>/evaluations/<name>.json`` and the generations to ``<name>.samples.jsonl`` next to it. Evaluating on
    public test data spends no privacy budget. Returns what was written.
    """
    import transformers

    transformers.logging.set_verbosity_error()
    out = Path(run_dir)
    for needed in ("config.json", "metrics.json", CHECKPOINT):
        if not (out / needed).exists():
            raise PrivtuneError(f"{out} is not a finished run folder ({needed} is missing): train it to the end first")
    config = TrainConfig.from_dict(read_json(out / "config.json"))
    overrides: dict[str, Any] = {"eval_file": eval_file, "eval_limit": eval_limit, "num_beams": num_beams,
                                 "max_new_tokens": max_new_tokens, "on_bad_rows": on_bad_rows}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if eval_file is not None and eval_limit is None:
        config.eval_limit = None  # the whole given file, not the run's limit on the shipped split
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise PrivtuneError(f"--name {name!r} must be a plain file name (no path separators)")
    task = get_task(config.task)
    eval_set = task.load_split(task.eval_split, config.eval_limit, config.eval_file, config.on_bad_rows)
    if not eval_set:
        raise DataError("the evaluation set is empty: nothing to evaluate")
    model, tokenizer = _build_model(config, task)
    _disable_dropout(model)
    load_trainable(model, load_checkpoint(out / CHECKPOINT)["trainable"], out / CHECKPOINT)
    folder = out / "evaluations"
    folder.mkdir(exist_ok=True)
    metrics = evaluate(model, tokenizer, task, eval_set, config, progress=progress,
                       samples_path=folder / f"{name}.samples.jsonl")
    result = {"run": str(out), "task": config.task, "eval_file": config.eval_file, "eval_limit": config.eval_limit,
              "eval_examples": len(eval_set), "num_beams": config.num_beams, "max_new_tokens": config.max_new_tokens,
              "metrics": metrics}
    write_json(folder / f"{name}.json", result)
    return result


def _parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's groups: the new classification head at ``head_learning_rate``, the rest at ``learning_rate``.

    A per-group rate is post-processing of the privatised gradient: it changes no privacy guarantee.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if config.head_learning_rate is None or config.classifier_mode != "head":
        return [{"params": [p for _, p in trainable]}]
    head = [p for name, p in trainable if is_head_parameter(name)]
    body = [p for name, p in trainable if not is_head_parameter(name)]
    if not head:
        raise PrivtuneError("--head-lr was given but the model has no trainable classification head")
    groups = [{"params": head, "lr": config.head_learning_rate}]
    return groups + ([{"params": body}] if body else [])


def _disable_dropout(model: nn.Module) -> None:
    """Dropout off: it adds no privacy, and the paper's recipes fine-tune without it."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def _fmt(metrics: dict[str, float] | None) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in (metrics or {}).items())


def _privacy_report(plan: PrivacyPlan | None, ledger: Ledger | None, config: TrainConfig) -> dict[str, Any]:
    if plan is None:
        return {"private": False, "note": "non-private run: no differential privacy guarantee"}
    report = plan.report(ledger)
    report["private"] = True
    report["max_grad_norm"] = config.max_grad_norm
    report["clipping"] = config.clipping
    report["note"] = (
        "epsilon covers the released model parameters; the training-loss curve in the report is computed on "
        "the private training data and is not itself protected"
    )
    return report


def _save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
          engine: PrivacyEngine | None, ledger: Ledger | None, history: dict[str, Any],
          metrics_before: dict[str, float] | None, step: int) -> None:
    save_checkpoint(path, {
        "step": step,
        "trainable": _trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "noise_rng": engine.generator.get_state() if engine is not None and engine.generator is not None else None,
        "torch_rng": torch.get_rng_state(),
        "ledger": ledger.to_dict() if ledger is not None else None,
        "history": history,
        "metrics_before": metrics_before,
    })


def _restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             engine: PrivacyEngine | None) -> None:
    load_trainable(model, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if engine is not None and engine.generator is not None and state["noise_rng"] is not None:
        engine.generator.set_state(state["noise_rng"])


def _check_resume(out: Path, config: TrainConfig) -> None:
    """A run folder with a checkpoint resumes only under the same configuration."""
    saved = out / "config.json"
    if not (out / CHECKPOINT).exists() or not saved.exists():
        return
    previous = read_json(saved)
    current = json.loads(json.dumps(config.to_dict(), default=str))
    changed = sorted(k for k in current if k not in ("output_dir",) and previous.get(k) != current[k])
    if changed:
        raise PrivtuneError(
            f"{out} holds a run with a different configuration ({', '.join(changed)} differ); "
            "resume with the same options or choose another --output-dir"
        )
    metrics = out / "metrics.json"
    if metrics.exists():
        raise PrivtuneError(f"{out} holds a finished run; choose another --output-dir")
