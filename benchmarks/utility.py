"""Utility of private fine-tuning on this CPU: non-private vs epsilon = 8 vs epsilon = 3, full vs LoRA.

Every run goes through privtune's own training job (``python -m privtune train``, one subprocess per run, so
each run is exactly what a user's command would do) with ``HF_HUB_OFFLINE=1``. A run folder that already holds
``metrics.json`` is skipped, so the script is resumable: kill it and start it again. Run folders live under
``benchmarks/out/utility/runs/`` (git-ignored); the results go to ``benchmarks/results/utility.json``,
``utility.md`` (the tables) and ``utility.png`` (metric vs epsilon; full vs LoRA; non-private dashed).

What is run (the full, non-``--quick`` grid; every value below is passed explicitly on the command line, so
later changes to the library's defaults do not change these runs):

* **SST-2 with MiniLM** (``minilm-l6``: all-MiniLM-L6-v2, 22.6M parameters; classification head on the
  masked mean of the token states with its output layer initialised to zero, privtune's default for this
  model since this study). Training data: the first 8,000 sentences of the GLUE SST-2 training set
  (``--train-limit 8000``, ``SST2_TRAIN``); evaluation: accuracy on the full dev set (872 sentences).
  1 epoch, logical batch 256 (Poisson sampling, q = 256/8000, 32 steps), max length 64, micro-batch 32,
  DP-Adam (AdamW, weight decay 0), flat clipping, noise calibrated with RDP, delta = 1/(2N) = 6.25e-5.
  Learning rate, clipping norm C, warm-up, head initialisation and head learning rate per cell in
  ``SST2_GRID``: full 5e-5 (private) / 1e-4 (non-private); LoRA (rank 8, alpha 16, query/value) 5e-3 / 1e-3;
  C = 0.1; no warm-up; the zero head at 3e-2 (private) / 1e-2 (non-private), and two cells with the head
  started as the zero-shot classifier of the label prompts (``--head-init prompt``) at 1e-2. LoRA again with
  3 epochs of the same 8,000 sentences (``SST2_LONG_GRID``: 96 steps, non-private / epsilon 8 / epsilon 3),
  as ``privtune plan`` suggests for this N (it aims at ~100 steps or more).
* **E2E with SmolLM2-135M** (``smollm2-135m``, 134.5M parameters, fp32). Training data: the first 512 rows of
  the E2E training set (``E2E_TRAIN``); evaluation: BLEU and ROUGE-L against all references of the first 50
  meaning representations of the test set (``E2E_EVAL``; greedy decoding, ``--num-beams 1``,
  ``--max-new-tokens 40``), plus teacher-forced perplexity. 1 epoch, logical batch 64 (8 steps), max length
  128, micro-batch 8, C = 0.1, no warm-up; learning rates per cell in ``E2E_GRID``: LoRA 2e-3 (private) /
  1e-3 (non-private), full 5e-4 / 2e-4. A subset this small is what this shared 2-core CPU allowed (about
  1 s per training example for LoRA, more for full fine-tuning); it is far too small for private training
  to learn much at epsilon 3.
* **E2E over the whole training set** (``E2E_FULLSET_GRID``): LoRA, ``--steps 8`` at logical batch 256, each
  step Poisson-sampled from all 42,061 training rows (q = 0.0061; sigma 0.60 at epsilon 3, 0.40 at epsilon 8),
  learning rates 1e-2 and 3e-3 (non-private and epsilon 3; epsilon 8 at 1e-2), C = 0.1, the same 50 test MRs and decoding as above, and then
  ``privtune evaluate`` of each finished run on every third test MR (210 of 630, all references;
  ``E2E_WIDE_EVAL_NAME``), because the first 50 MRs all describe one restaurant and BLEU on them moves by several
  points between equally good runs. The same compute as 4 epochs of 512 rows, with 6x less noise per update.
  Each private run is compared with the *best* non-private run of the same protocol. The search adds the
  non-private reference at 3e-2, and the epsilon-3 cell (1e-2) and the non-private one (3e-3) again with
  ``--seed 1``.
* **The hyper-parameter search** (``search_runs``): cheaper SST-2 proxies (the first 2,000 sentences, 1 epoch,
  batch 128 = 16 steps, epsilon = 3, full dev set) over the learning rate (5e-4, 1e-3, 2e-3 full; 2e-3, 5e-3
  LoRA), the clipping norm (0.1 vs 1.0), warm-up (0 vs 3 steps) and a non-private reference, plus one LoRA
  run at the grid's size (8,000 sentences, batch 256) with learning rate 2e-3 next to the grid's 5e-3;
  reported in their own table. Then, at the grid's size with the head at 3e-2, full fine-tuning with body rates
  1e-5 and 2e-5 and with per-layer clipping (body 5e-5 and 1e-5); and LoRA on twice the sentences (16,000, batch
  512, 1 epoch) at epsilon 3 and non-private. The first two (full, 2e-3 and 5e-4) ran with two OpenMP threads, the rest
  with one.

Each run uses one OpenMP thread (``THREADS``) unless ``OMP_NUM_THREADS`` is set, and ``--jobs`` runs several
at once; the results were produced with two or three runs at a time next to another engineer's benchmark,
so the times are those of a busy machine.

The reported epsilon is the one the ledger records as spent, under RDP and PLD (``privacy.json``,
``spent``). Wall time is the whole subprocess (model loading, evaluation before and after, training), and
"train s" is the training loop alone.

Usage::

    .venv/bin/python benchmarks/utility.py                 # search + grid, then render (resumable)
    .venv/bin/python benchmarks/utility.py --phase grid    # only the grid
    .venv/bin/python benchmarks/utility.py --only e2e      # runs whose name contains "e2e"
    .venv/bin/python benchmarks/utility.py --render-only   # re-render the tables and the plot
    .venv/bin/python benchmarks/utility.py --quick         # smoke test: tiny data, writes to benchmarks/out
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "benchmarks" / "out" / "utility" / "runs"
RESULTS = ROOT / "benchmarks" / "results"

SST2_TRAIN = 8000
SST2_EVAL = 872
E2E_TRAIN = 512
E2E_EVAL = 50
E2E_NEW_TOKENS = 40
# One OpenMP thread per run (unless OMP_NUM_THREADS is set): on this shared 2-core machine a 2-thread torch
# process ran a MiniLM forward+backward 7.5x slower than a 1-thread one (4.7 s vs 0.62 s; its threads spin
# waiting for each other while the other processes hold the cores). --jobs 2 runs two 1-thread runs at once.
THREADS = 1


@dataclass
class Run:
    """One ``privtune train`` command."""

    name: str
    task: str
    model: str
    method: str
    epsilon: float | None  # None: non-private
    train_limit: int | None  # None: the whole training set
    eval_limit: int
    epochs: float
    batch_size: int
    lr: float
    max_grad_norm: float
    warmup_steps: int
    phase: str = "grid"
    eval_before: bool = True
    head_lr: float | None = None  # --head-lr (classification heads); None: not passed
    extra: list[str] = field(default_factory=list)
    steps: int | None = None  # --steps instead of --epochs: each step samples from the whole training set
    wide_eval: bool = False  # E2E: also `privtune evaluate` on every third test MR (E2E_WIDE_EVAL_NAME)

    @property
    def head_init(self) -> str:
        """The ``--head-init`` this run passes ("" if none: generation tasks)."""
        return self.extra[self.extra.index("--head-init") + 1] if "--head-init" in self.extra else ""

    def argv(self, out: Path) -> list[str]:
        argv = [
            sys.executable, "-m", "privtune", "train", "--task", self.task, "--model", self.model,
            "--method", self.method,
        ]
        if self.train_limit is not None:
            argv += ["--train-limit", str(self.train_limit)]
        argv += ["--eval-limit", str(self.eval_limit)]
        argv += ["--epochs", str(self.epochs)] if self.steps is None else ["--steps", str(self.steps)]
        argv += [
            "--batch-size", str(self.batch_size), "--lr", str(self.lr),
            "--warmup-steps", str(self.warmup_steps), "--output-dir", str(out), "--quiet", "--json",
        ]
        argv += ["--non-private"] if self.epsilon is None else ["--epsilon", str(self.epsilon),
                                                                 "--max-grad-norm", str(self.max_grad_norm)]
        if self.head_lr is not None:
            argv += ["--head-lr", str(self.head_lr)]
        if not self.eval_before:
            argv.append("--no-eval-before")
        return argv + self.extra


def _lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def _privacy_label(epsilon: float | None) -> str:
    return "nonpriv" if epsilon is None else f"eps{epsilon:g}"


# ---- the hyper-parameter search: SST-2 proxies (2,000 sentences, 1 epoch, batch 128, epsilon 3) ----------

def search_runs(quick: bool) -> list[Run]:
    n, n_eval, b = (300, 100, 32) if quick else (2000, SST2_EVAL, 128)
    settings = [  # method, epsilon, lr, C, warm-up
        ("full", 3.0, 2e-3, 0.1, 0),
        ("full", 3.0, 5e-4, 0.1, 0),
        ("lora", 3.0, 2e-3, 0.1, 0),
        ("full", None, 1e-4, 0.1, 0),
        ("full", 3.0, 1e-3, 0.1, 0),
        ("lora", 3.0, 5e-3, 0.1, 0),
        ("full", 3.0, 1e-3, 0.1, 3),
        ("full", 3.0, 1e-3, 1.0, 0),
    ]
    runs = []
    for method, eps, lr, c, warmup in settings:
        name = f"search-sst2-{method}-{_privacy_label(eps)}-lr{_lr(lr)}" + ("" if eps is None else f"-C{c:g}")
        name += f"-w{warmup}"
        runs.append(Run(name, "sst2", "minilm-l6", method, eps, n, n_eval, 1.0, b, lr, c, warmup, phase="search"))
    # At the grid's size (8,000 sentences, batch 256): LoRA at 2e-3 next to the grid's 5e-3.
    n, b = (300, 32) if quick else (SST2_TRAIN, SST2_BATCH)
    runs.append(Run(f"search-sst2-lora-eps3-lr2e-3-C0.1-w0-n{n}", "sst2", "minilm-l6", "lora", 3.0, n, n_eval, 1.0,
                    b, 2e-3, 0.1, 0, phase="search", eval_before=False))
    # With a head learning rate of its own: does per-layer clipping (each tensor its own C/sqrt(K)) keep the
    # head's share of the clipped gradient, which flat clipping gives mostly to the 22M body coordinates?
    runs.append(Run(f"search-sst2-full-eps3-lr5e-5-head3e-2-perlayer-n{n}", "sst2", "minilm-l6", "full", 3.0, n,
                    n_eval, 1.0, b, 5e-5, 0.1, 0, phase="search", eval_before=False, head_lr=3e-2,
                    extra=["--clipping", "per_layer"]))
    # Full fine-tuning with the head at 3e-2: a smaller body rate than the grid's 5e-5, against the drift of the
    # pooled features under DP-Adam's noise (the grid's full runs rank well but predict one class).
    for body_lr in (1e-5, 2e-5):
        runs.append(Run(f"search-sst2-full-eps3-lr{_lr(body_lr)}-head3e-2-n{n}", "sst2", "minilm-l6", "full", 3.0, n,
                        n_eval, 1.0, b, body_lr, 0.1, 0, phase="search", eval_before=False, head_lr=3e-2,
                        extra=["--head-init", "zero"]))
    runs.append(Run(f"search-sst2-full-eps3-lr1e-5-head3e-2-perlayer-n{n}", "sst2", "minilm-l6", "full", 3.0, n,
                    n_eval, 1.0, b, 1e-5, 0.1, 0, phase="search", eval_before=False, head_lr=3e-2,
                    extra=["--clipping", "per_layer", "--head-init", "zero"]))
    # LoRA, the grid's best private method, with twice the sentences in one epoch at batch 512 (the same q, a
    # slightly smaller sigma, twice the signal per step), next to its non-private twin; the three-epoch variant
    # of the same idea is in the grid (SST2_LONG_GRID).
    n_more, b_more = (300, 32) if quick else (2 * SST2_TRAIN, 2 * SST2_BATCH)
    for eps, lr, head_lr in ((3.0, 5e-3, 3e-2), (None, 1e-3, 1e-2)):
        runs.append(Run(f"search-sst2-lora-{_privacy_label(eps)}-n{n_more}-b{b_more}", "sst2", "minilm-l6", "lora",
                        eps, n_more, n_eval, 1.0, b_more, lr, 0.1, 0, phase="search", eval_before=False,
                        head_lr=head_lr, extra=["--head-init", "zero"]))
    # E2E over the whole training set (the grid's E2E_FULLSET protocol, where 1e-2 and 3e-3 are): a larger rate
    # for the non-private reference.
    n_e2e, b_e2e, steps_e2e = (64, 16, 2) if quick else (None, E2E_FULLSET_BATCH, E2E_FULLSET_STEPS)
    for eps, lr in ((None, 3e-2),):
        runs.append(Run(f"search-e2e-smollm2-lora-{_privacy_label(eps)}-all-b{b_e2e}-s{steps_e2e}-lr{_lr(lr)}", "e2e",
                        "smollm2-135m", "lora", eps, n_e2e, 4 if quick else E2E_EVAL, 1.0, b_e2e, lr, 0.1, 0,
                        phase="search", eval_before=False, steps=steps_e2e, wide_eval=not quick,
                        extra=["--num-beams", "1", "--max-new-tokens", str(8 if quick else E2E_NEW_TOKENS)]))
    # The grid's epsilon-3 cell again with another seed (LoRA initialisation; batches and noise are secret draws
    # in every run): how far one run's BLEU is from another's at the same setting.
    # The non-private reference's best rate again with the same seed, for the same reason.
    for eps, lr in ((3.0, 1e-2), (None, 3e-3)):
        runs.append(Run(f"search-e2e-smollm2-lora-{_privacy_label(eps)}-all-b{b_e2e}-s{steps_e2e}-lr{_lr(lr)}-seed1",
                        "e2e", "smollm2-135m", "lora", eps, n_e2e, 4 if quick else E2E_EVAL, 1.0, b_e2e, lr, 0.1, 0,
                        phase="search", eval_before=False, steps=steps_e2e, wide_eval=not quick,
                        extra=["--num-beams", "1", "--max-new-tokens", str(8 if quick else E2E_NEW_TOKENS),
                               "--seed", "1"]))
    return runs


# ---- the grid -----------------------------------------------------------------------------------------------

# (method, epsilon, head init) -> (learning rate, clipping norm, warm-up steps, head learning rate)
SST2_GRID: dict[tuple[str, float | None, str], tuple[float, float, int, float]] = {  # in order of priority
    # A zero-initialised head with its own learning rate (--head-lr): a linear probe on MiniLM's frozen
    # features reaches 78-80% with DP-Adam at 2e-2..5e-2, while the body needs a small rate under noise.
    ("full", None, "zero"): (1e-4, 0.1, 0, 1e-2),
    ("lora", None, "zero"): (1e-3, 0.1, 0, 1e-2),
    ("lora", 3.0, "zero"): (5e-3, 0.1, 0, 3e-2),
    ("full", 3.0, "zero"): (5e-5, 0.1, 0, 3e-2),
    ("lora", 8.0, "zero"): (5e-3, 0.1, 0, 3e-2),
    ("full", 8.0, "zero"): (5e-5, 0.1, 0, 3e-2),
    # The head starts as the zero-shot classifier of the label prompts (--head-init prompt; 71% before any
    # training): it needs refining, not building, so a smaller head rate. Both lost to the zero head above.
    ("lora", 3.0, "prompt"): (5e-3, 0.1, 0, 1e-2),
    ("full", 3.0, "prompt"): (5e-5, 0.1, 0, 1e-2),
}
SST2_EPOCHS, SST2_BATCH = 1.0, 256
# LoRA again, three epochs of the same 8,000 sentences (96 steps; sigma 0.89 instead of 0.79 at epsilon 3), as
# `privtune plan` suggests (it scales epochs so that a run has ~100 steps or more). Full fine-tuning is not
# repeated at three epochs: each such run takes ~25 min here and the one-epoch runs already show its gap.
SST2_LONG_GRID: dict[tuple[str, float | None], tuple[float, float, int, float]] = {
    ("lora", None): (1e-3, 0.1, 0, 1e-2),
    ("lora", 3.0): (5e-3, 0.1, 0, 3e-2),
    ("lora", 8.0): (5e-3, 0.1, 0, 3e-2),
}
SST2_LONG_EPOCHS = 3.0

E2E_GRID: dict[tuple[str, float | None], tuple[float, float, int]] = {  # in order of priority
    ("lora", None): (1e-3, 0.1, 0),
    ("lora", 3.0): (2e-3, 0.1, 0),
    ("lora", 8.0): (2e-3, 0.1, 0),
    ("full", None): (2e-4, 0.1, 0),
    ("full", 3.0): (5e-4, 0.1, 0),
    ("full", 8.0): (5e-4, 0.1, 0),
}
E2E_EPOCHS, E2E_BATCH = 1.0, 64
# The same task sampled from the whole training set (42,061 rows): at q = 256/42,061 epsilon 3 needs only
# sigma = 0.60 for 8 steps (0.61 for 16: at this q the steps barely cost privacy), so the noise in the averaged
# gradient, sigma C / B, is 6x smaller than with 512 rows at batch 64 (sigma 0.89). What limits the run is
# compute (2,048 training examples, ~35 min per run here), not privacy. LoRA only: its ~0.5M coordinates
# carry far less total noise than full fine-tuning's 135M, which SST-2 showed matters most under DP.
# (method, epsilon) -> learning rates (C = 0.1, no warm-up). Non-private and epsilon 3 both at 1e-2 and 3e-3, so
# that the private cell and its reference get the same search (3e-2 diverged non-privately: search table).
E2E_FULLSET_GRID: dict[tuple[str, float | None], tuple[float, ...]] = {  # in order of priority
    ("lora", None): (1e-2, 3e-3),
    ("lora", 3.0): (1e-2, 3e-3),
    ("lora", 8.0): (1e-2,),
}
E2E_FULLSET_STEPS, E2E_FULLSET_BATCH = 8, 256
# The first 50 test MRs all describe one restaurant (the test set is sorted by name), and BLEU on 50 short
# texts moves by several points between runs of equal quality; runs marked wide_eval are also evaluated, after
# training, on every third test MR (210 of 630, all their references) with `privtune evaluate`.
E2E_WIDE_EVAL_NAME, E2E_WIDE_EVAL_EVERY = "test-every3", 3


def grid_runs(quick: bool) -> list[Run]:
    runs = []
    for (method, eps, head_init), (lr, c, warmup, head_lr) in SST2_GRID.items():
        n, n_eval, b, epochs = (300, 100, 32, 1.0) if quick else (SST2_TRAIN, SST2_EVAL, SST2_BATCH, SST2_EPOCHS)
        # Zero-head runs keep their first names (their folders hold the results); the head was zero by default.
        name = f"sst2-minilm-{method}-{_privacy_label(eps)}" + ("" if head_init == "zero" else f"-{head_init}")
        runs.append(Run(f"{name}-head{_lr(head_lr)}", "sst2", "minilm-l6", method, eps, n, n_eval, epochs, b, lr, c,
                        warmup, eval_before=eps is None or head_init != "zero", head_lr=head_lr,
                        extra=["--head-init", head_init]))
    for (method, eps), (lr, c, warmup, head_lr) in SST2_LONG_GRID.items():
        n, n_eval, b, epochs = (300, 100, 32, 1.0) if quick else (SST2_TRAIN, SST2_EVAL, SST2_BATCH, SST2_LONG_EPOCHS)
        runs.append(Run(f"sst2-minilm-{method}-{_privacy_label(eps)}-ep3-head{_lr(head_lr)}", "sst2", "minilm-l6",
                        method, eps, n, n_eval, epochs, b, lr, c, warmup, eval_before=False, head_lr=head_lr,
                        extra=["--head-init", "zero"]))
    for (method, eps), (lr, c, warmup) in E2E_GRID.items():
        n, n_eval, b, epochs = (64, 4, 16, 1.0) if quick else (E2E_TRAIN, E2E_EVAL, E2E_BATCH, E2E_EPOCHS)
        tokens = 8 if quick else E2E_NEW_TOKENS
        runs.append(Run(f"e2e-smollm2-{method}-{_privacy_label(eps)}", "e2e", "smollm2-135m", method, eps, n,
                        n_eval, epochs, b, lr, c, warmup, eval_before=eps is None,
                        extra=["--num-beams", "1", "--max-new-tokens", str(tokens)]))
    for (method, eps), rates in E2E_FULLSET_GRID.items():
        n, n_eval, b, steps = (64, 4, 16, 2) if quick else (None, E2E_EVAL, E2E_FULLSET_BATCH, E2E_FULLSET_STEPS)
        tokens = 8 if quick else E2E_NEW_TOKENS
        for i, lr in enumerate(rates):
            runs.append(Run(f"e2e-smollm2-{method}-{_privacy_label(eps)}-all-b{b}-s{steps}-lr{_lr(lr)}", "e2e",
                            "smollm2-135m", method, eps, n, n_eval, 1.0, b, lr, 0.1, 0,
                            eval_before=eps is None and i == 0,
                            extra=["--num-beams", "1", "--max-new-tokens", str(tokens)], steps=steps,
                            wide_eval=not quick))
    return runs


# ---- running ------------------------------------------------------------------------------------------------

def e2e_wide_eval_file(runs_dir: Path) -> Path:
    """Every ``E2E_WIDE_EVAL_EVERY``-th meaning representation of the shipped E2E test set, with all its
    references, as a CSV in the task's format (written once, next to the run folders)."""
    import csv
    import io

    from privtune.runs import write_text
    from privtune.tasks import get_task

    path = runs_dir.parent / f"e2e-{E2E_WIDE_EVAL_NAME}.csv"
    if path.exists():
        return path
    task = get_task("e2e")
    kept = task.load_split(task.eval_split, None, None, "error")[::E2E_WIDE_EVAL_EVERY]  # grouped by MR
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["mr", "ref"])
    writer.writerows((example.source, ref) for example in kept for ref in example.references)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buffer.getvalue())
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # see THREADS
        env.setdefault(name, str(THREADS))
    return env


def wide_eval_one(run: Run, runs_dir: Path) -> bool:
    """``privtune evaluate`` a finished E2E run on the wide test subset (skipped when already done)."""
    out = runs_dir / run.name
    if not run.wide_eval or (out / "evaluations" / f"{E2E_WIDE_EVAL_NAME}.json").exists():
        return True
    argv = [sys.executable, "-m", "privtune", "evaluate", str(out), "--eval-file", str(e2e_wide_eval_file(runs_dir)),
            "--name", E2E_WIDE_EVAL_NAME, "--quiet"]
    print(f"[eval] {run.name}: {' '.join(argv[3:])}", flush=True)
    with open(runs_dir / f"{run.name}.{E2E_WIDE_EVAL_NAME}.log", "w") as log:
        proc = subprocess.run(argv, env=_env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        print(f"[FAIL] {run.name} evaluation: exit {proc.returncode}", flush=True)
    return proc.returncode == 0


def run_one(run: Run, runs_dir: Path) -> bool:
    out = runs_dir / run.name
    if (out / "metrics.json").exists():
        print(f"[skip] {run.name}: finished already", flush=True)
        return wide_eval_one(run, runs_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = _env()
    print(f"[run ] {run.name}: {' '.join(run.argv(out)[3:])}", flush=True)
    started = time.perf_counter()
    with open(runs_dir / f"{run.name}.log", "w") as log:
        proc = subprocess.run(run.argv(out), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(f"[FAIL] {run.name}: exit {proc.returncode}, see {runs_dir / (run.name + '.log')}", flush=True)
        return False
    (out / "wall.json").write_text(json.dumps({"wall_seconds": wall}) + "\n")
    print(f"[done] {run.name}: {wall:.0f} s", flush=True)
    return wide_eval_one(run, runs_dir)


# ---- gathering and rendering --------------------------------------------------------------------------------

PRIMARY = {"sst2": "accuracy", "e2e": "bleu"}


def run_all(runs: list[Run], runs_dir: Path, jobs: int) -> bool:
    if jobs <= 1:
        return all([run_one(run, runs_dir) for run in runs])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
        return all(pool.map(lambda run: run_one(run, runs_dir), runs))


def _command(run: Run) -> str:
    return "privtune " + " ".join(run.argv(Path("RUN"))[3:])


def previous_rows(results: Path) -> dict[str, dict[str, Any]]:
    """Finished rows of an earlier ``utility.json``, by run name (for runs whose folders are not here)."""
    path = results / "utility.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {row["name"]: row for row in data.get("runs", []) if not row.get("missing") and row.get("command")}


def gather(runs: list[Run], runs_dir: Path, previous: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per run, from its run folder; a run without a folder keeps its row from ``previous`` (an earlier
    ``utility.json``) only if that row was produced by exactly the same command, and is marked ``reused``."""
    rows = []
    previous = previous or {}
    for run in runs:
        out = runs_dir / run.name
        if not (out / "metrics.json").exists():
            old = previous.get(run.name)
            if old is not None and old["command"] == _command(run):
                rows.append(dict(old, reused=True))
                continue
            rows.append({"name": run.name, "phase": run.phase, "task": run.task, "model": run.model,
                         "method": run.method, "head_init": run.head_init, "target_epsilon": run.epsilon,
                         "missing": True})
            continue
        metrics = json.loads((out / "metrics.json").read_text())
        privacy = json.loads((out / "privacy.json").read_text())
        config = json.loads((out / "config.json").read_text())
        wall = json.loads((out / "wall.json").read_text())["wall_seconds"] if (out / "wall.json").exists() else None
        spent = (privacy.get("spent") or {}).get("epsilon") or {}
        wide_path = out / "evaluations" / f"{E2E_WIDE_EVAL_NAME}.json"
        wide = json.loads(wide_path.read_text()) if run.wide_eval and wide_path.exists() else None
        rows.append({
            "name": run.name, "phase": run.phase, "task": run.task, "model": run.model, "method": run.method,
            "head_init": run.head_init, "target_epsilon": run.epsilon, "missing": False,
            "epsilon_rdp": spent.get("rdp"), "epsilon_pld": spent.get("pld"),
            "delta": privacy.get("delta"), "noise_multiplier": privacy.get("noise_multiplier"),
            "sigma_eff": privacy.get("sigma_eff"), "sample_rate": privacy.get("sample_rate"),
            "after": metrics["after"], "before": metrics.get("before"),
            "wide": None if wide is None else {"metrics": wide["metrics"], "eval_examples": wide["eval_examples"]},
            "train_examples": metrics["train_examples"], "eval_examples": metrics["eval_examples"],
            "steps": metrics["steps"], "trainable_parameters": metrics["trainable_parameters"],
            # --steps runs have no epochs: record the fraction of the set their examples amount to.
            "epochs": config["epochs"] if config.get("epochs") is not None
            else metrics["steps"] * config["batch_size"] / metrics["train_examples"],
            "steps_given": config.get("steps"),
            "batch_size": config["batch_size"], "learning_rate": config["learning_rate"],
            "max_grad_norm": None if run.epsilon is None else config["max_grad_norm"],
            "warmup_steps": config["warmup_steps"], "max_length": config["max_length"],
            "micro_batch_size": config["micro_batch_size"],
            "train_seconds": metrics.get("train_seconds"), "wall_seconds": wall,
            "command": _command(run), "head_learning_rate": config.get("head_learning_rate"),
            "clipping": None if run.epsilon is None else config.get("clipping", "flat"),
            "diagnostic": diagnose_sst2(run, out) if run.task == "sst2" and run.phase == "grid" else None,
        })
    return rows


def diagnose_sst2(run: Run, out: Path) -> dict[str, float] | None:
    """A diagnostic, not a result: how well the trained classifier *ranks* the dev sentences (ROC AUC of the
    logit difference) and its accuracy with the best threshold chosen on the dev set itself. It separates "learned
    nothing" from "learned to rank but its logits drifted towards one class". Cached in ``diagnostic.json``."""
    cached = out / "diagnostic.json"
    if cached.exists():
        return json.loads(cached.read_text())
    if not (out / "checkpoint.pt").exists():
        return None
    import torch
    import transformers

    from privtune.methods import apply_method
    from privtune.models import load_model
    from privtune.runs import load_checkpoint
    from privtune.tasks import get_task
    from privtune.train import load_trainable

    torch.set_num_threads(THREADS)
    transformers.logging.set_verbosity_error()
    config = json.loads((out / "config.json").read_text())
    model, tokenizer = load_model(run.model, "classification", num_labels=2, seed=config["seed"])
    model = apply_method(model, run.method, lora_rank=config["lora_rank"])
    load_trainable(model, load_checkpoint(out / "checkpoint.pt")["trainable"], out / "checkpoint.pt")
    model.eval()
    task = get_task("sst2")
    dev = task.load_split(task.eval_split, run.eval_limit, None, "error")
    margins = []
    with torch.no_grad():
        for i in range(0, len(dev), 64):
            batch = task.collate(tokenizer, dev[i:i + 64], config["max_length"], mode="head")
            inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            logits = model(**inputs).logits
            margins.append(logits[:, 1] - logits[:, 0])
    margin = torch.cat(margins)
    labels = torch.tensor([e.label for e in dev])
    pos, neg = margin[labels == 1], margin[labels == 0]
    auc = float((pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean())
    ordered = labels[margin.argsort()]
    below_neg = torch.cat([torch.zeros(1), (ordered == 0).float().cumsum(0)])
    above_pos = (ordered == 1).float().sum() - torch.cat([torch.zeros(1), (ordered == 1).float().cumsum(0)])
    result = {"auc": auc, "best_threshold_accuracy": float((below_neg + above_pos).max()) / len(dev) * 100,
              "predicted_positive": float((margin > 0).float().mean()) * 100,
              "margin_mean": float(margin.mean()), "margin_std": float(margin.std())}
    cached.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _privacy_cell(row: dict[str, Any]) -> str:
    if row["target_epsilon"] is None:
        return "non-private"
    if row.get("missing"):
        return f"eps={row['target_epsilon']:g}"
    pld = row["epsilon_pld"]
    return (f"eps={row['target_epsilon']:g} (spent: RDP {row['epsilon_rdp']:.2f}, "
            f"PLD {'n/a' if pld is None else f'{pld:.2f}'})")


def _metric_cell(row: dict[str, Any]) -> str:
    after = row["after"]
    if row["task"] == "sst2":
        return f"acc {after['accuracy']:.1f}%"
    cell = f"BLEU {after['bleu']:.1f}, ROUGE-L {after['rouge_l']:.1f}, ppl {after['perplexity']:.2f}"
    wide = row.get("wide")
    if wide:
        m = wide["metrics"]
        cell += (f"; on {wide['eval_examples']} MRs: **BLEU {m['bleu']:.1f}**, ROUGE-L {m['rouge_l']:.1f}, "
                 f"ppl {m['perplexity']:.2f}")
    return cell


def _score(row: dict[str, Any], metric: str) -> float:
    """The run's score on the widest evaluation it has (E2E: the wide test subset when evaluated on it)."""
    return (row.get("wide") or {"metrics": row["after"]})["metrics"][metric]


def _table(rows: list[dict[str, Any]], search: bool = False) -> str:
    header = ["task", "model", "method", "head init", "privacy", "metric", "train N", "epochs", "B", "steps", "lr",
              "head lr", "C", "clipping", "warm-up", "sigma", "train s", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.get("missing"):
            lines.append(f"| {row['task']} | {row['model']} | {row['method']} | {row.get('head_init') or '-'} | "
                         f"{_privacy_cell(row)} | not run (out of time) |" + " |" * (len(header) - 6))
            continue
        sigma = "-" if row["noise_multiplier"] is None else f"{row['noise_multiplier']:.3f}"
        c = "-" if row["max_grad_norm"] is None else f"{row['max_grad_norm']:g}"
        head_lr = row.get("head_learning_rate")
        cells = [row["task"], row["model"], row["method"], row.get("head_init") or "-", _privacy_cell(row),
                 _metric_cell(row) + (" (earlier run)" if row.get("reused") else ""),
                 f"{row['train_examples']:,}", f"{row['epochs']:.3g}", str(row["batch_size"]), str(row["steps"]),
                 f"{row['learning_rate']:g}", "-" if head_lr is None else f"{head_lr:g}", c,
                 "-" if row["max_grad_norm"] is None else row.get("clipping") or "flat", str(row["warmup_steps"]), sigma,
                 f"{row['train_seconds']:.0f}" if row["train_seconds"] else "-",
                 f"{row['wall_seconds']:.0f}" if row["wall_seconds"] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _protocol(row: dict[str, Any]) -> str:
    """How long a run trained, when it is not the default single epoch: "3 epochs" or "8 steps over all 42,061"."""
    if row.get("steps_given"):
        return f"{row['steps']} steps over all {row['train_examples']:,}"
    return "" if row["epochs"] == 1 else f"{row['epochs']:g} epochs"


def _gaps(rows: list[dict[str, Any]]) -> list[str]:
    """Each private run's distance to the best non-private run of the same task, method, head init and protocol
    (on the widest evaluation both have), and to the best non-private run of the task, against the targets."""
    targets = {"sst2": 3.0, "e2e": 6.0}
    lines = []
    done = [r for r in rows if not r.get("missing") and r["phase"] == "grid"]
    for task in ("sst2", "e2e"):
        metric = PRIMARY[task]
        references = [r for r in done if r["task"] == task and r["target_epsilon"] is None]
        best = max(references, key=lambda r: r["after"][metric], default=None)
        for r in done:
            if r["task"] != task or r["target_epsilon"] is None:
                continue
            same = [b for b in references if b["method"] == r["method"] and (b.get("head_init") or "") == (r.get("head_init") or "")
                    and b["epochs"] == r["epochs"] and b["train_examples"] == r["train_examples"]]
            if not same:
                continue
            # The best non-private run of the same protocol (several when the learning rate was searched).
            base = max(same, key=lambda b: _score(b, metric))
            wide = bool(r.get("wide") and base.get("wide"))
            score, base_score = ((r["wide"]["metrics"][metric], base["wide"]["metrics"][metric]) if wide
                                 else (r["after"][metric], base["after"][metric]))
            gap = base_score - score
            target = targets[task] if r["target_epsilon"] == 3.0 else None
            verdict = "" if target is None else (" - target met" if gap <= target else " - target NOT met")
            variant = f" ({r['head_init']} head)" if r.get("head_init") else ""
            variant += f", {_protocol(r)}" if _protocol(r) else ""
            if wide:
                variant += f", on {r['wide']['eval_examples']} test MRs"
            line = (f"* {task} {r['method']}{variant} eps={r['target_epsilon']:g} (lr {r['learning_rate']:g}): "
                    f"{metric} {score:.1f} vs {base_score:.1f} non-private (lr {base['learning_rate']:g}), "
                    f"gap {gap:.1f} points"
                    + (f" (target: within {target:g}){verdict}" if target is not None else ""))
            if best is not None and best is not base:
                line += f"; {best['after'][metric] - r['after'][metric]:.1f} below the best non-private run"
            lines.append(line)
    return lines


def render(rows: list[dict[str, Any]], results: Path, quick: bool) -> None:
    results.mkdir(parents=True, exist_ok=True)
    grid = [r for r in rows if r["phase"] == "grid"]
    search = [r for r in rows if r["phase"] == "search"]
    (results / "utility.json").write_text(json.dumps({"quick": quick, "runs": rows}, indent=2) + "\n")
    before = {r["task"] + (f", {r['head_init']} head" if r.get("head_init") else ""): r["before"]
              for r in grid if not r.get("missing") and r.get("before")}
    parts = ["# Utility of private fine-tuning (benchmarks/utility.py)", "",
             "Produced by `benchmarks/utility.py`" + (" --quick (a smoke test, not results)" if quick else "")
             + "; the script's docstring lists the exact subsets and settings.", "", "## Results", "",
             _table(grid), ""]
    if any(r.get("reused") for r in rows):
        parts += ["\"(earlier run)\": kept from the previous `utility.json`, produced by an earlier invocation of this "
                  "script with exactly the same `privtune train` command (its run folder is not on this machine).", ""]
    for task, metrics in before.items():
        parts.append(f"Before fine-tuning ({task}): " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()) + ".")
    parts += ["", "Distance to non-private:", "", *_gaps(rows), "", "![metric vs epsilon](utility.png)", ""]
    diagnosed = [r for r in grid if r.get("diagnostic")]
    if diagnosed:
        parts += ["Diagnostic (SST-2; not a result: the threshold is chosen on the dev set itself): how well each "
                  "model ranks the dev sentences, and where its logits sit.", "",
                  "| method | head init | privacy | accuracy | ROC AUC | best-threshold accuracy | predicted positive | "
                  "logit margin mean +- std |", "|---|---|---|---|---|---|---|---|"]
        for r in diagnosed:
            d = r["diagnostic"]
            parts.append(f"| {r['method']} | {r.get('head_init') or '-'} | {_privacy_cell(r)} | "
                         f"{r['after']['accuracy']:.1f}% | {d['auc']:.3f} | "
                         f"{d['best_threshold_accuracy']:.1f}% | {d['predicted_positive']:.0f}% | "
                         f"{d['margin_mean']:.2f} +- {d['margin_std']:.2f} |")
        parts += ["", "(The dev set is 51% positive.)", ""]
    if search:
        parts += ["## Hyper-parameter search (SST-2 proxies)", "", _table(search), ""]
    (results / "utility.md").write_text("\n".join(parts))
    _plot(grid, results / "utility.png")


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if not r.get("missing")]
    tasks = [t for t in ("sst2", "e2e") if any(r["task"] == t for r in done)]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    colors = {"full": "tab:blue", "lora": "tab:orange"}
    markers = {"": "o", "zero": "s", "prompt": "o"}
    for ax, task in zip(axes[0], tasks):
        metric = PRIMARY[task]
        variants = sorted({(r["method"], r.get("head_init") or "", _protocol(r)) for r in done if r["task"] == task})
        for method, variant, protocol in variants:
            group = [r for r in done if r["task"] == task and r["method"] == method
                     and (r.get("head_init") or "") == variant and _protocol(r) == protocol]
            label = method + (f", {variant} head" if variant else "") + (f", {protocol}" if protocol else "")
            style = "-" if variant != "zero" else ":"
            color = colors[method] if not protocol else {"full": "tab:purple", "lora": "tab:red"}[method]
            if "steps over all" in protocol:
                color = {"full": "tab:cyan", "lora": "tab:green"}[method]
            best: dict[float, dict[str, Any]] = {}  # the best run per epsilon (and one non-private line)
            for r in group:
                key = -1.0 if r["target_epsilon"] is None else r["target_epsilon"]
                if key not in best or _score(r, metric) > _score(best[key], metric):
                    best[key] = r
            group = list(best.values())
            wide = [r["wide"]["eval_examples"] for r in group if r.get("wide")]
            label += f", {wide[0]} test MRs" if wide else ""
            private = sorted((r for r in group if r["target_epsilon"] is not None), key=lambda r: r["epsilon_rdp"])
            if private:
                ax.plot([r["epsilon_rdp"] for r in private], [_score(r, metric) for r in private],
                        markers.get(variant, "o") + style, color=color, label=f"{label} (DP)")
            for r in group:
                if r["target_epsilon"] is None:
                    ax.axhline(_score(r, metric), linestyle="--" if variant != "zero" else ":",
                               color=color, label=f"{label} (non-private)")
        model = done[[r["task"] for r in done].index(task)]["model"]
        ax.set(xlabel="epsilon spent (RDP)", ylabel=metric, title=f"{task} / {model}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", choices=("search", "grid", "all"), default="all")
    parser.add_argument("--only", help="run only the runs whose name contains this (comma-separated: any of these)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke test; writes under benchmarks/out")
    parser.add_argument("--render-only", action="store_true", help="gather finished runs and render")
    parser.add_argument("--dry-run", action="store_true", help="print the commands")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with OMP_NUM_THREADS=1)")
    args = parser.parse_args()
    runs_dir = RUNS.parent / "quick" if args.quick else RUNS
    results = RUNS.parent / "quick-results" if args.quick else RESULTS
    runs = (search_runs(args.quick) if args.phase in ("search", "all") else []) + (
        grid_runs(args.quick) if args.phase in ("grid", "all") else [])
    only = [part for part in (args.only or "").split(",") if part]
    todo = [r for r in runs if not only or any(part in r.name for part in only)]
    if args.dry_run:
        for run in todo:
            print(" ".join(run.argv(runs_dir / run.name)))
        return 0
    ok = True
    if not args.render_only:
        ok = run_all(todo, runs_dir, args.jobs)
    everything = search_runs(args.quick) + grid_runs(args.quick)
    render(gather(everything, runs_dir, previous_rows(results)), results, args.quick)
    print(f"results: {results / 'utility.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
