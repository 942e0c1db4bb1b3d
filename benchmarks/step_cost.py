"""Cost of one private training step: privtune's engine vs a non-private step vs Opacus.

What is measured
----------------
For each configuration (model, sequence length T, micro-batch B) and each *kind* of step:

* ``nonprivate``: forward, mean loss, ``loss.backward()``, ``AdamW.step()`` (the reference);
* ``nonprivate-untied``: the same with the input embedding and the LM head untied (only the headline
  configuration by default): the fair reference for ``opacus-ghost``, which refuses tied weights;
* ``privtune-bk-auto`` / ``-bk-ghost`` / ``-bk-perex``: privtune with ``clipped_sum="bookkeeping"`` and
  ``norm_method`` = ``"auto"`` (the default) / ``"ghost"`` / ``"per_example"``;
* ``privtune-2bw-auto``: privtune with ``clipped_sum="second_backward"`` (ghost clipping, Li et al. 2022);
* ``opacus-hooks`` / ``opacus-ghost``: Opacus 1.6 ``make_private(grad_sample_mode="hooks" | "ghost")``.

Every private kind uses flat clipping with C = 1, noise multiplier 1 and AdamW (lr 1e-4), models are
randomly initialised with a fixed seed and all dropout is 0, so every kind does the same model work. All
kinds get the same inputs, including explicit ``position_ids`` expanded to (B, T) (Opacus needs a batch
dimension on every layer input). Models: the GPT-2 124M configuration and the SmolLM2-135M (Llama)
configuration.

Method
------
* **Process isolation.** Each (model, T, B, kind) measurement runs in its own fresh Python process
  (``step_cost.py --worker SPEC``): running two models in one process distorts the second (allocator and
  cache state), by up to 1.7x on this machine. The worker builds the model, runs ``--warmup`` untimed steps
  and ``--steps`` timed steps (``time.perf_counter`` around each whole step) and prints one JSON line.
  Workers use ``torch.set_num_threads(2)``.
* **Interleaving and medians.** The machine is shared, so its speed drifts by 2-4x over minutes. Kinds are
  interleaved as whole processes (round r runs every kind of a configuration back to back, in an order
  rotated by r), the headline configuration is repeated for ``--headline-rounds`` rounds and the others
  for ``--rounds`` rounds. A kind's time is the median over its runs of each run's median step time;
  ratios divide by the ``nonprivate`` kind of the same configuration. The JSON also holds the median of
  the per-round (paired) ratios, and every raw step time.
* **Wall and CPU time.** Both are recorded per step. Wall time is what the issue asks for, but on this
  shared 2-core machine other jobs take our cores for minutes at a time and wall time swings by 2-4x.
  Workers run with ``OMP_WAIT_POLICY=PASSIVE`` (a thread waiting at a barrier sleeps instead of spinning),
  so CPU time (user + system, all threads) measures the work done and barely moves with the load; its
  ratios are the robust ones. It under-weights serial work (one busy thread instead of two) by up to 2x
  relative to wall time on an idle machine.
* **Memory.** After the model, optimizer and engine are built the worker resets the kernel's peak-RSS
  counter (``/proc/self/clear_refs`` = 5) and records the resident set size (the *baseline*). After the
  steps, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is the peak RSS during the steps (*raw peak*).
  **Step memory = raw peak - baseline**: everything a training step adds on top of the loaded model
  (activations, gradients, per-example quantities, AdamW's state, which is allocated by the first step).
  The memory ratios in the tables use step memory; raw peaks are reported alongside. The peak is taken
  over warm-up and timed steps (the second step is the first whose backward runs with AdamW's state
  allocated).
* **Largest micro-batch under a memory cap** (``--mem-cap-gib`` of step memory, headline model and T):
  step memory is linear in B, so a line fitted to the B-scan measurements predicts the largest B; that
  prediction is then checked with real runs (two steps each): galloping up from the last B that fits
  (or down from the first that does not) and bisecting, so the reported B fits and B + 1 does not. A
  watchdog thread in the worker ends a probe as soon as its RSS passes the cap (so failed probes are
  cheap); the decision uses the exact peak.
* **Logical batches** (phase ``accumulate``): the headline model, T and micro-batch with ``--accumulate K``
  (default 4) micro-batches per optimizer step, as private fine-tuning is run (logical batches of hundreds of
  examples): non-private accumulates gradients, privtune accumulates clipped sums and draws the noise once per
  step. Only ``nonprivate`` and the book-keeping modes ``auto`` and ``ghost``; same interleaving.
* **Profile** (``--profile``, on by default): two steps of the fastest privtune kind (by CPU time) and of
  the non-private step, each in its own process, under torch.profiler. privtune's functions, autograd
  and AdamW are wrapped in timing ranges (in the worker process only; the library is not modified) that
  record CPU and wall time and mark profiler ranges, splitting the step into forward, recording hooks,
  backward pass(es), per-example rules, norms, clip factors, clipped sums, noise and the optimizer. The
  top-ops tables go to ``benchmarks/out/profile.txt``; the split goes into the results.
* **Budget.** Defaults: 3 rounds of 1 warm-up + 2 timed steps for the headline configuration, 1 round of
  1 warm-up + 1 timed step elsewhere (about an hour at this machine's load); ``--resume JSON`` adds phases
  or rounds to an existing results file (every addition is recorded in it). The profile section also states
  the *floor*: noise plus norms as a share of the non-private step, work that no private step can skip.

Outputs: ``benchmarks/results/step_cost.json`` (everything, raw runs included), ``step_cost.md`` (the
tables; also spliced into ``benchmarks/README.md`` between ``<!-- step_cost:begin -->`` and
``<!-- step_cost:end -->``) and ``step_cost.png``. ``benchmarks/out/`` is scratch (log, raw runs, profile).
``--out-name NAME`` changes the stem of the three results files (``NAME.json``, ``NAME.md``, ``NAME.png``), e.g.
to re-measure a few configurations without overwriting the full run; with a stem other than the default
``step_cost`` nothing is spliced into ``benchmarks/README.md`` (unless ``--readme`` is given explicitly).

Usage::

    .venv/bin/python benchmarks/step_cost.py --quick          # smoke test, tiny 2-layer models
    .venv/bin/python benchmarks/step_cost.py                  # the full default run (~1 hour here)
    .venv/bin/python benchmarks/step_cost.py --render-only benchmarks/results/step_cost.json
    .venv/bin/python benchmarks/step_cost.py --resume benchmarks/results/step_cost.json --phases profile
    .venv/bin/python benchmarks/step_cost.py --out-name step_cost_headline --models gpt2-124m ...  # side file
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

HERE = Path(__file__).resolve().parent
RESULT_PREFIX = "RESULT "
README_BEGIN = "<!-- step_cost:begin -->"
README_END = "<!-- step_cost:end -->"
DEFAULT_OUT_NAME = "step_cost"  # stem of the results files; only this stem is spliced into the README
GIB = 1024.0

# ----------------------------------------------------------------------------------------- catalogue

KINDS: MappingProxyType[str, str] = MappingProxyType(
    {
        "nonprivate": "non-private (AdamW)",
        "nonprivate-untied": "non-private, untied embeddings",
        "privtune-bk-auto": "privtune bookkeeping + auto (default)",
        "privtune-bk-ghost": "privtune bookkeeping + ghost",
        "privtune-bk-perex": "privtune bookkeeping + per_example",
        "privtune-2bw-auto": "privtune second_backward + auto",
        "opacus-hooks": "Opacus hooks",
        "opacus-ghost": "Opacus ghost (untied embeddings)",
    }
)
PRIVTUNE_MODES: MappingProxyType[str, tuple[str, str]] = MappingProxyType(
    {
        "privtune-bk-auto": ("bookkeeping", "auto"),
        "privtune-bk-ghost": ("bookkeeping", "ghost"),
        "privtune-bk-perex": ("bookkeeping", "per_example"),
        "privtune-2bw-auto": ("second_backward", "auto"),
    }
)
UNTIED_KINDS = frozenset({"nonprivate-untied", "opacus-ghost"})
REFERENCE = "nonprivate"
DEFAULT_MAX_BATCH_KINDS = ("nonprivate", "privtune-bk-auto", "privtune-2bw-auto", "opacus-hooks", "opacus-ghost")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model configuration: ``family`` is ``"gpt2"`` or ``"llama"``; ``config`` the HF config kwargs."""

    label: str
    family: str
    config: tuple[tuple[str, Any], ...]


MODELS: MappingProxyType[str, ModelSpec] = MappingProxyType(
    {
        "gpt2-124m": ModelSpec("GPT-2 124M", "gpt2", ()),
        "smollm2-135m": ModelSpec(
            "SmolLM2-135M (Llama)",
            "llama",
            (
                ("hidden_size", 576),
                ("intermediate_size", 1536),
                ("num_hidden_layers", 30),
                ("num_attention_heads", 9),
                ("num_key_value_heads", 3),
                ("vocab_size", 49152),
                ("max_position_embeddings", 8192),
                ("rope_theta", 100000),
                ("tie_word_embeddings", True),
                ("rms_norm_eps", 1e-5),
            ),
        ),
        # --quick: two layers, small width and vocabulary (exercises every code path in seconds).
        "tiny-gpt2": ModelSpec(
            "tiny GPT-2 (2 layers)",
            "gpt2",
            (("n_layer", 2), ("n_embd", 128), ("n_head", 4), ("vocab_size", 4096), ("n_positions", 512),
             ("bos_token_id", 0), ("eos_token_id", 0)),
        ),
        "tiny-llama": ModelSpec(
            "tiny Llama (2 layers)",
            "llama",
            (
                ("hidden_size", 128),
                ("intermediate_size", 256),
                ("num_hidden_layers", 2),
                ("num_attention_heads", 4),
                ("num_key_value_heads", 2),
                ("vocab_size", 4096),
                ("max_position_embeddings", 512),
                ("tie_word_embeddings", True),
                ("rms_norm_eps", 1e-5),
            ),
        ),
    }
)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration: model, sequence length, micro-batch; ``rounds`` = how often each kind runs."""

    model: str
    seq_len: int
    batch: int
    rounds: int = 1

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.model, self.seq_len, self.batch)


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs (passed as JSON on its command line)."""

    model: str
    seq_len: int
    batch: int
    kind: str
    warmup: int
    steps: int
    seed: int = 0
    profile: bool = False
    abort_above_mib: float | None = None
    scratch: str = ""
    micro_batches: int = 1  # micro-batches of ``batch`` examples per optimizer step (gradient accumulation)


# ------------------------------------------------------------------------------------ memory helpers


def _proc_status_mib(field: str) -> float:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def _maxrss_mib() -> float:
    """Peak RSS of this process (``ru_maxrss``, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); True when it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return _maxrss_mib() <= _proc_status_mib("VmRSS") + 64.0


@contextlib.contextmanager
def _watchdog(baseline_mib: float, limit_mib: float | None, emit: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """End the process as soon as RSS exceeds ``baseline + limit`` (max-batch probes only)."""
    if limit_mib is None:
        yield
        return
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.01):
            rss = _proc_status_mib("VmRSS")
            if rss - baseline_mib > limit_mib:
                emit({"status": "over_cap", "step_mem_mib": rss - baseline_mib,
                      "reason": f"RSS {rss - baseline_mib:.0f} MiB above baseline (aborted)"})
                os._exit(0)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# ------------------------------------------------------------------------------------------- worker


def build_model(name: str, untie: bool, seed: int) -> Any:
    """The model ``name`` with random weights (seeded), dropout 0, SDPA attention, in train mode.

    ``untie`` gives the LM head its own copy of the input embedding (Opacus ghost refuses tied weights).
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    spec = MODELS[name]
    kwargs = dict(spec.config)
    torch.manual_seed(seed)
    if spec.family == "gpt2":
        config = GPT2Config(
            **kwargs, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
            attn_implementation="sdpa",
        )
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(**kwargs, attention_dropout=0.0, attn_implementation="sdpa")
        model = LlamaForCausalLM(config)
    if untie:
        model.config.tie_word_embeddings = False
        embedding = model.get_input_embeddings()
        model.lm_head.weight = torch.nn.Parameter(embedding.weight.detach().clone())
        assert model.lm_head.weight is not embedding.weight
    return model.train()


class _PerExampleCausalLM:
    """Criterion for Opacus ghost: per-example losses when ``reduction == "none"``, else reduced.

    Opacus' ``DPLossFastGradientClipping`` flips ``reduction`` to ``"none"`` around its call.
    """

    def __init__(self) -> None:
        self.reduction = "mean"

    def __call__(self, logits: Any, labels: Any) -> Any:
        from privtune.losses import causal_lm_losses

        losses = causal_lm_losses(logits, labels)
        if self.reduction == "none":
            return losses
        return losses.mean() if self.reduction == "mean" else losses.sum()


def make_step(kind: str, model: Any, batch: int, inputs: dict[str, Any], labels: Any,
              micro_batches: int = 1) -> Callable[[], None]:
    """Set up ``kind`` on ``model`` and return a closure running one whole training step: ``micro_batches``
    forward/backward passes over micro-batches of ``batch`` examples (gradients accumulated), then one
    optimizer step (privtune: one noise draw, expected batch size ``batch * micro_batches``)."""
    import torch

    from privtune import PrivacyEngine
    from privtune.losses import causal_lm_losses

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if kind in ("nonprivate", "nonprivate-untied"):

        def step() -> None:
            for _ in range(micro_batches):
                loss = causal_lm_losses(model(**inputs).logits, labels).mean() / micro_batches
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step
    if kind in PRIVTUNE_MODES:
        clipped_sum, norm_method = PRIVTUNE_MODES[kind]
        engine = PrivacyEngine(
            model, optimizer, max_grad_norm=1.0, noise_multiplier=1.0, expected_batch_size=batch * micro_batches,
            clipping="flat", norm_method=norm_method, clipped_sum=clipped_sum, self_check=False,
        )

        def private_step() -> None:
            for _ in range(micro_batches):
                engine.backward(causal_lm_losses(model(**inputs).logits, labels))
            engine.step()

        return private_step
    if micro_batches != 1:
        raise ValueError(f"{kind} is measured with one micro-batch per step only")
    if kind in ("opacus-hooks", "opacus-ghost"):
        from opacus import PrivacyEngine as OpacusEngine
        from torch.utils.data import DataLoader, TensorDataset

        loader = DataLoader(TensorDataset(inputs["input_ids"]), batch_size=batch)  # sample rate 1, size B
        common = {
            "module": model, "optimizer": optimizer, "data_loader": loader, "noise_multiplier": 1.0,
            "max_grad_norm": 1.0, "poisson_sampling": False,
        }
        if kind == "opacus-hooks":
            module, dp_optimizer, _ = OpacusEngine(accountant="rdp").make_private(**common, grad_sample_mode="hooks")

            def hooks_step() -> None:
                loss = causal_lm_losses(module(**inputs).logits, labels).mean()
                loss.backward()
                dp_optimizer.step()
                dp_optimizer.zero_grad(set_to_none=True)

            return hooks_step
        module, dp_optimizer, criterion, _ = OpacusEngine(accountant="rdp").make_private(
            **common, criterion=_PerExampleCausalLM(), grad_sample_mode="ghost"
        )

        def ghost_step() -> None:
            loss = criterion(module(**inputs).logits, labels)  # backward() runs both of Opacus' passes
            loss.backward()
            dp_optimizer.step()
            dp_optimizer.zero_grad(set_to_none=True)

        return ghost_step
    raise ValueError(f"unknown kind {kind!r}")


class RangeClock:
    """Inclusive wall and CPU seconds per label, each range also marked for torch.profiler (profile workers).

    CPU time (``time.process_time``: all threads, with ``OMP_WAIT_POLICY=PASSIVE``) is the robust split on
    a shared machine; the profiler's own times are wall-clock.
    """

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def reset(self) -> None:
        self.cpu.clear()
        self.wall.clear()
        self.calls.clear()

    @contextlib.contextmanager
    def measure(self, label: str) -> Iterator[None]:
        from torch.profiler import record_function

        cpu0, wall0 = time.process_time(), time.perf_counter()
        try:
            with record_function(label):
                yield
        finally:
            self.cpu[label] = self.cpu.get(label, 0.0) + time.process_time() - cpu0
            self.wall[label] = self.wall.get(label, 0.0) + time.perf_counter() - wall0
            self.calls[label] = self.calls.get(label, 0) + 1

    def per_step(self, steps: int) -> dict[str, dict[str, float]]:
        return {label: {"ms_per_step": 1000.0 * self.cpu[label] / steps,
                        "wall_ms_per_step": 1000.0 * self.wall[label] / steps,
                        "calls_per_step": self.calls[label] / steps} for label in self.cpu}


def _instrument_privtune(clock: RangeClock) -> None:
    """Wrap privtune's engine functions (and autograd, AdamW) in ``clock`` ranges (this worker only)."""
    import torch

    import privtune.engine as engine_module
    from privtune.grads import DenseGrad, OuterGrad

    try:
        from privtune.noise import GaussianNoise
    except ImportError:  # an engine version from before the noise sampler
        GaussianNoise = None

    def wrap(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with clock.measure(label):
                return fn(*args, **kwargs)

        return wrapper

    targets = (  # (owner, attribute, label); attributes the engine version at hand lacks are skipped
        (engine_module.PrivacyEngine, "_record_call", "privtune::hooks(forward)"),
        (engine_module.PrivacyEngine, "backward", "privtune::backward"),
        (engine_module.PrivacyEngine, "_per_example_grads", "privtune::rules"),
        (engine_module.PrivacyEngine, "_accumulate", "privtune::accumulate"),
        (engine_module.PrivacyEngine, "step", "privtune::step"),
        (engine_module, "total_sq_norms", "privtune::norms"),
        (engine_module, "clip_factors", "privtune::clip_factors"),
        (engine_module, "gaussian_like", "privtune::noise"),
        (engine_module, "gaussian_", "privtune::noise"),
        (GaussianNoise, "fill_", "privtune::noise"),
        (OuterGrad, "clipped_sum", "privtune::clipped_sum"),
        (DenseGrad, "clipped_sum", "privtune::clipped_sum"),
        (OuterGrad, "add_clipped_sum_", "privtune::clipped_sum"),
        (DenseGrad, "add_clipped_sum_", "privtune::clipped_sum"),
        (torch.autograd, "grad", "autograd::grad"),
        (torch.Tensor, "backward", "autograd::backward"),
        (next(c for c in torch.optim.AdamW.__mro__ if "step" in vars(c)), "step", "optimizer::step"),
    )
    for owner, attribute, label in targets:
        if owner is not None and attribute in vars(owner):  # defined there, not inherited (a wrapped base method would count twice)
            setattr(owner, attribute, wrap(getattr(owner, attribute), label))


def _profiled_steps(step: Callable[[], None], steps: int, out_path: Path, clock: RangeClock) -> dict[str, Any]:
    """Profile ``steps`` steps; write the top-ops table to ``out_path``; return per-step range times."""
    from torch.profiler import ProfilerActivity, profile

    clock.reset()
    start, cpu_start = time.perf_counter(), time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - start) / steps
    cpu = (time.process_time() - cpu_start) / steps
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=30)
    out_path.write_text(table + "\n")
    ranges = {
        event.key: {"ms_per_step": event.cpu_time_total / 1000.0 / steps, "calls_per_step": event.count / steps}
        for event in averages
        if event.key.startswith(("privtune::", "autograd::", "optimizer::", "bench::"))
    }
    top = [
        {"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000.0 / steps, "calls_per_step": e.count / steps}
        for e in sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    ]
    return {"wall_s_per_step": wall, "cpu_s_per_step": cpu, "ranges": ranges, "cpu_ranges": clock.per_step(steps),
            "top_ops": top, "table_path": str(out_path)}


def engine_fingerprint() -> dict[str, str]:
    """Which privtune engine was measured: a hash of the engine's source files and the git HEAD (the
    engine may change between runs of a long benchmark; the report flags mixed versions)."""
    import hashlib

    import privtune

    root = Path(privtune.__file__).resolve().parent
    digest = hashlib.sha1()
    for path in [root / name for name in ("engine.py", "grads.py", "noise.py", "clipping.py")] + sorted(
        (root / "rules").glob("*.py")
    ):
        if path.exists():
            digest.update(path.name.encode() + path.read_bytes())
    head = subprocess.run(["git", "-C", str(root.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root.parent), "status", "--porcelain", "--", "privtune"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"engine_sha1": digest.hexdigest()[:12], "git_head": head + ("+dirty" if dirty else "")}


def run_worker(spec: WorkerSpec) -> dict[str, Any]:
    """Build, warm up, time; return the worker's result (also on failure: ``status`` says what)."""
    result: dict[str, Any] = dataclasses.asdict(spec)
    result.update(status="ok", reason="", load_start=os.getloadavg()[0])

    def emit(extra: dict[str, Any]) -> None:
        print(RESULT_PREFIX + json.dumps({**result, **extra}), flush=True)

    try:
        import torch

        torch.set_num_threads(2)
        result.update(engine_fingerprint())
        start = time.perf_counter()
        model = build_model(spec.model, untie=spec.kind in UNTIED_KINDS, seed=spec.seed)
        vocab = model.config.vocab_size
        generator = torch.Generator().manual_seed(spec.seed + 1)
        ids = torch.randint(vocab, (spec.batch, spec.seq_len), generator=generator)
        positions = torch.arange(spec.seq_len).unsqueeze(0).expand(spec.batch, -1).contiguous()
        inputs = {"input_ids": ids, "position_ids": positions}
        clock = RangeClock()
        if spec.profile:
            _instrument_privtune(clock)
        step = make_step(spec.kind, model, spec.batch, inputs, ids, spec.micro_batches)
        if spec.profile:
            inner = step

            def step() -> None:
                with clock.measure("bench::step"):
                    inner()

        result["build_s"] = time.perf_counter() - start
        result["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        result["lifetime_peak_before_mib"] = _maxrss_mib()
        gc.collect()
        result["hwm_reset"] = _reset_peak_rss()
        baseline = _proc_status_mib("VmRSS")
        result["baseline_mib"] = baseline
        wall: list[float] = []
        cpu: list[float] = []
        sys_s: list[float] = []
        faults: list[int] = []
        with _watchdog(baseline, spec.abort_above_mib, emit):
            for index in range(spec.warmup + (0 if spec.profile else spec.steps)):
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                t0, c0 = time.perf_counter(), time.process_time()
                step()
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                sys_s.append(r1.ru_stime - r0.ru_stime)
                faults.append(r1.ru_minflt - r0.ru_minflt)
                if index == 0:
                    result["first_step_s"] = wall[-1]
            if spec.profile:
                scratch = Path(spec.scratch or HERE / "out")
                scratch.mkdir(parents=True, exist_ok=True)
                result["profile"] = _profiled_steps(step, spec.steps, scratch / f"profile_{spec.kind}.txt", clock)
        peak = _maxrss_mib()
        timed = wall[spec.warmup :]
        result.update(
            warmup_s=wall[: spec.warmup],
            step_s=timed,
            cpu_s=cpu[spec.warmup :],
            sys_s=sys_s[spec.warmup :],
            minor_faults=faults[spec.warmup :],
            median_s=statistics.median(timed) if timed else None,
            median_cpu_s=statistics.median(cpu[spec.warmup :]) if timed else None,
            raw_peak_mib=peak,
            step_mem_mib=peak - baseline,
            load_end=os.getloadavg()[0],
        )
        if spec.abort_above_mib is not None and peak - baseline > spec.abort_above_mib:
            result.update(status="over_cap", reason=f"peak {peak - baseline:.0f} MiB above baseline")
    except Exception as exc:  # every failure is a result: OOM, unsupported module, bug
        message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
        oom = isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "out of memory" in str(exc)
        result.update(status="oom" if oom else "failed", reason=message)
    return result


# ------------------------------------------------------------------------------------------- parent


@dataclasses.dataclass
class Settings:
    """The parent's resolved options."""

    models: list[str]
    seq_lens: list[int]
    batch_sizes: list[int]
    batch_scan_models: list[str]
    kinds: list[str]
    headline: tuple[str, int, int]
    rounds: int
    headline_rounds: int
    warmup: int
    steps: int
    scan_steps: int
    untied_reference: str
    mem_cap_gib: float
    max_batch_kinds: list[str]
    max_batch_limit: int
    profile: bool
    profile_steps: int
    phases: list[str]
    worker_timeout: int
    worker_mem_limit_gib: float
    omp_wait_policy: str
    results_dir: Path
    scratch_dir: Path
    readme: Path | None
    quick: bool
    out_name: str = DEFAULT_OUT_NAME
    accumulate: int = 4
    accumulate_rounds: int = 3


def plan_cells(settings: Settings) -> list[Cell]:
    """T-scan (every model, every T, headline B) + B-scan (headline T) + the headline, deduplicated."""
    head_model, head_t, head_b = settings.headline
    keys: list[tuple[str, int, int]] = [settings.headline]
    keys += [(m, t, head_b) for m in settings.models for t in settings.seq_lens]
    keys += [(m, head_t, b) for m in settings.batch_scan_models for b in settings.batch_sizes]
    seen: set[tuple[str, int, int]] = set()
    cells = []
    for key in keys:
        if key not in seen:
            seen.add(key)
            rounds = settings.headline_rounds if key == settings.headline else settings.rounds
            cells.append(Cell(*key, rounds=rounds))
    return cells


def kinds_for(cell: Cell, settings: Settings) -> list[str]:
    """The kinds measured in ``cell`` (the untied reference only where ``--untied-reference`` says)."""
    kinds = list(settings.kinds)
    if "nonprivate-untied" in kinds and settings.untied_reference == "headline" and cell.key != settings.headline:
        kinds.remove("nonprivate-untied")
    return kinds


def _worker_env(settings: Settings) -> dict[str, str]:
    """Two OpenMP threads; ``OMP_WAIT_POLICY`` (PASSIVE by default) so that a thread waiting at a barrier
    sleeps instead of spinning, which keeps CPU time a measure of the work done even when the shared
    machine takes one of our cores away."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", OMP_WAIT_POLICY=settings.omp_wait_policy,
               TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    return env


def _limit_address_space(limit_gib: float) -> Callable[[], None]:
    """``preexec_fn`` capping the worker's address space, so that a runaway kind fails with an
    allocation error (reported as OOM) instead of waking the kernel's OOM killer on a shared machine."""

    def apply() -> None:
        limit = int(limit_gib * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def spawn(spec: WorkerSpec, settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """Run one worker process and return its parsed result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(dataclasses.asdict(spec))]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=settings.worker_timeout, env=_worker_env(settings),
            preexec_fn=_limit_address_space(settings.worker_mem_limit_gib), check=False,
        )
    except subprocess.TimeoutExpired:
        return {**dataclasses.asdict(spec), "status": "timeout", "reason": f"over {settings.worker_timeout} s",
                "process_s": time.perf_counter() - start}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if lines:
        result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    elif proc.returncode < 0 and -proc.returncode == 9:
        result = {**dataclasses.asdict(spec), "status": "oom", "reason": "killed (SIGKILL, likely the OOM killer)"}
    else:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        result = {**dataclasses.asdict(spec), "status": "failed", "reason": f"exit {proc.returncode}: {' | '.join(tail)}"}
    result["process_s"] = time.perf_counter() - start
    if result["status"] == "failed" and proc.stderr:
        log(f"    stderr tail: {proc.stderr.strip().splitlines()[-1][:300]}")
    return result


def _fmt_run(result: dict[str, Any]) -> str:
    if result["status"] != "ok":
        return f"{result['status']}: {result.get('reason', '')[:160]}"
    return (
        f"median {result['median_s']:.2f} s (steps {', '.join(f'{s:.2f}' for s in result['step_s'])}), "
        f"step mem {result['step_mem_mib']:.0f} MiB, load {result['load_start']:.1f}->{result['load_end']:.1f}"
    )


def run_main(settings: Settings, log: Callable[[str], None], sink: Callable[[dict[str, Any]], None],
             first_round: int = 0) -> None:
    """The interleaved rounds: every kind of every cell, as whole processes; each result goes to ``sink``.
    ``first_round`` numbers the rounds after those of a resumed results file."""
    cells = plan_cells(settings)
    total = sum(cell.rounds * len(kinds_for(cell, settings)) for cell in cells)
    done = 0
    start = time.perf_counter()
    for round_index in range(max(cell.rounds for cell in cells)):
        for cell in cells:
            if round_index >= cell.rounds:
                continue
            kinds = kinds_for(cell, settings)
            shift = round_index % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                steps = settings.steps if cell.key == settings.headline else settings.scan_steps
                spec = WorkerSpec(cell.model, cell.seq_len, cell.batch, kind, settings.warmup, steps)
                result = spawn(spec, settings, log)
                result["round"] = first_round + round_index
                result["phase"] = "main"
                sink(result)
                done += 1
                elapsed = time.perf_counter() - start
                eta = elapsed / done * (total - done)
                log(f"[{done}/{total} {elapsed / 60:.1f} min, eta {eta / 60:.0f} min] round {round_index} "
                    f"{cell.model} T={cell.seq_len} B={cell.batch} {kind}: {_fmt_run(result)}")


def accumulate_kinds(settings: Settings) -> list[str]:
    """The kinds of the accumulation phase: the reference and the book-keeping privtune modes measured."""
    return [REFERENCE] + [k for k in settings.kinds
                          if k in PRIVTUNE_MODES and PRIVTUNE_MODES[k] in (("bookkeeping", "auto"), ("bookkeeping", "ghost"))]


def run_accumulate(settings: Settings, log: Callable[[str], None], sink: Callable[[dict[str, Any]], None],
                   first_round: int = 0) -> None:
    """Headline model, T and micro-batch, but ``settings.accumulate`` micro-batches per optimizer step, as private
    fine-tuning is run (logical batches of hundreds of examples): the noise and the optimizer step are paid once
    per logical batch. Kinds interleaved as whole processes, like the main phase."""
    model, seq_len, batch = settings.headline
    kinds = accumulate_kinds(settings)
    total = settings.accumulate_rounds * len(kinds)
    done = 0
    for round_index in range(settings.accumulate_rounds):
        shift = round_index % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            spec = WorkerSpec(model, seq_len, batch, kind, warmup=1, steps=1, micro_batches=settings.accumulate)
            result = spawn(spec, settings, log)
            result["round"] = first_round + round_index
            result["phase"] = "accumulate"
            sink(result)
            done += 1
            log(f"[accumulate {done}/{total}] {model} T={seq_len} B={batch} x{settings.accumulate} micro-batches "
                f"{kind}: {_fmt_run(result)}")


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def aggregate(runs: list[dict[str, Any]], phase: str = "main") -> list[dict[str, Any]]:
    """Per (model, T, B, kind): medians over the runs of ``phase``, and ratios to ``nonprivate`` of the same
    cell (``phase="accumulate"``: the runs with several micro-batches per step)."""
    groups: dict[tuple[str, int, int, str], list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("phase", "main") == phase:
            groups.setdefault((run["model"], run["seq_len"], run["batch"], run["kind"]), []).append(run)
    cells: dict[tuple[str, int, int, str], dict[str, Any]] = {}
    for (model, seq_len, batch, kind), group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        bad = [r for r in group if r["status"] != "ok"]
        cells[(model, seq_len, batch, kind)] = {
            "model": model, "seq_len": seq_len, "batch": batch, "kind": kind,
            "micro_batches": group[0].get("micro_batches", 1),
            "status": "ok" if ok else bad[0]["status"],
            "reason": "" if ok else bad[0].get("reason", ""),
            "runs": len(group), "ok_runs": len(ok),
            "median_s": _median(r["median_s"] for r in ok),
            "median_cpu_s": _median(r["median_cpu_s"] for r in ok),
            "all_step_s": [s for r in ok for s in r["step_s"]],
            "step_mem_mib": _median(r["step_mem_mib"] for r in ok),
            "raw_peak_mib": _median(r["raw_peak_mib"] for r in ok),
            "baseline_mib": _median(r["baseline_mib"] for r in ok),
            "params_m": ok[0]["params_m"] if ok else None,
            "engine_sha1": sorted({r.get("engine_sha1", "?") for r in group}),
        }
    for (model, seq_len, batch, kind), cell in cells.items():
        ref = cells.get((model, seq_len, batch, REFERENCE))
        usable = cell["status"] == "ok" and ref is not None and ref["status"] == "ok"
        for field, out in (("median_s", "time_ratio"), ("median_cpu_s", "cpu_ratio"),
                           ("step_mem_mib", "mem_ratio"), ("raw_peak_mib", "raw_peak_ratio")):
            cell[out] = cell[field] / ref[field] if usable and ref[field] else None
        paired, paired_cpu = [], []
        for run in groups[(model, seq_len, batch, kind)]:
            partner = [r for r in groups.get((model, seq_len, batch, REFERENCE), [])
                       if r.get("round") == run.get("round") and r["status"] == "ok"]
            if run["status"] == "ok" and partner:
                paired.append(run["median_s"] / partner[0]["median_s"])
                paired_cpu.append(run["median_cpu_s"] / partner[0]["median_cpu_s"])
        cell["paired_time_ratio"] = _median(paired)
        cell["paired_cpu_ratio"] = _median(paired_cpu)
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(cells.values(), key=lambda c: (c["model"], c["seq_len"], c["batch"], order.get(c["kind"], 99)))


# ------------------------------------------------------------------------------------ max micro-batch


def _fit_line(points: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares ``mem = a + b * B``; None without two distinct B or with a non-positive slope."""
    if len({b for b, _ in points}) < 2:
        return None
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_m = sum(m for _, m in points) / n
    slope = sum((b - mean_b) * (m - mean_m) for b, m in points) / sum((b - mean_b) ** 2 for b, _ in points)
    return (mean_m - slope * mean_b, slope) if slope > 0 else None


def search_max_batch(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """Largest B in [0, limit] with ``fits(B)`` (assumed monotone): gallop from ``start``, then bisect."""
    start = min(max(start, 1), limit)
    if fits(start):
        lo, step, hi = start, 1, None
        while hi is None:
            if lo + step > limit:
                if lo == limit or fits(limit):
                    return limit
                hi = limit
            elif fits(lo + step):
                lo, step = lo + step, step * 2
            else:
                hi = lo + step
    else:
        hi, step, lo = start, 1, None
        while lo is None:
            if hi - step < 1:
                lo = 0
            elif fits(hi - step):
                lo = hi - step
            else:
                hi, step = hi - step, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def run_max_batch(settings: Settings, cells: list[dict[str, Any]], log: Callable[[str], None],
                  sink: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Largest micro-batch whose step memory fits ``--mem-cap-gib``, per kind (headline model and T)."""
    model, seq_len, _ = settings.headline
    cap_mib = settings.mem_cap_gib * GIB
    out: dict[str, Any] = {"model": model, "seq_len": seq_len, "cap_gib": settings.mem_cap_gib, "kinds": {}}
    for kind in settings.max_batch_kinds:
        points = [(c["batch"], c["step_mem_mib"]) for c in cells
                  if c["model"] == model and c["seq_len"] == seq_len and c["kind"] == kind and c["status"] == "ok"]
        line = _fit_line(points)
        if line is not None:
            predicted = int((cap_mib - line[0]) // line[1])
        elif points:
            predicted = int(min(cap_mib / (m / b) for b, m in points))
        else:
            predicted = 1
        probes: list[dict[str, Any]] = []
        failure: list[str] = []

        def fits(batch: int, kind: str = kind, probes: list[dict[str, Any]] = probes,
                 failure: list[str] = failure) -> bool:
            if failure:
                return False
            spec = WorkerSpec(model, seq_len, batch, kind, warmup=1, steps=1, abort_above_mib=cap_mib)
            result = spawn(spec, settings, log)
            result["phase"] = "max_batch"
            sink(result)
            ok = result["status"] == "ok" and result["step_mem_mib"] <= cap_mib
            if result["status"] not in ("ok", "over_cap", "oom"):
                failure.append(f"{result['status']}: {result.get('reason', '')}")
            probes.append({"batch": batch, "fits": ok, "status": result["status"],
                           "step_mem_mib": result.get("step_mem_mib"), "reason": result.get("reason", "")})
            log(f"  max-batch {kind} B={batch}: {'fits' if ok else 'does not fit'} ({_fmt_run(result)})")
            return ok

        best = search_max_batch(fits, predicted, settings.max_batch_limit)
        out["kinds"][kind] = {
            "max_batch": None if failure else best,
            "predicted": predicted,
            "fit": None if line is None else {"base_mib": line[0], "mib_per_example": line[1]},
            "probes": probes,
            "status": f"failed: {failure[0]}" if failure else "ok",
        }
        log(f"max-batch {kind}: {out['kinds'][kind]['max_batch']} (predicted {predicted}, {len(probes)} probes)")
    return out


# ------------------------------------------------------------------------------------------ profile

PROFILE_ROWS = (
    ("forward + loss (+ zero_grad)", "forward"),
    ("  of which privtune's recording hooks", "privtune::hooks(forward)"),
    ("autograd backward pass(es)", "autograd"),
    ("per-example rules (factors of G_i)", "privtune::rules"),
    ("per-example norms", "privtune::norms"),
    ("clip factors", "privtune::clip_factors"),
    ("clipped sums (book-keeping)", "privtune::clipped_sum"),
    ("noise", "privtune::noise"),
    ("optimizer step (AdamW)", "optimizer::step"),
    ("rest of the engine", "engine_other"),
    ("whole step", "bench::step"),
)
ENGINE_PARTS = ("privtune::rules", "privtune::norms", "privtune::clip_factors", "privtune::clipped_sum",
                "privtune::accumulate", "privtune::noise")


def _profile_split(ranges: dict[str, dict[str, float]]) -> dict[str, float]:
    """Milliseconds per step of each component of ``PROFILE_ROWS`` (from inclusive ranges).

    ``forward`` is the step minus the backward (``engine.backward`` or ``loss.backward``) minus what follows
    it (``engine.step`` or the optimizer step); the engine's parts are nested inside those two ranges, and
    whatever of them no part accounts for is ``engine_other`` (Python work, checks, division, frees).
    """

    def ms(key: str) -> float:
        return ranges.get(key, {}).get("ms_per_step", 0.0)

    step = ms("bench::step")
    autograd = ms("autograd::grad") + ms("autograd::backward")
    backward = ms("privtune::backward") or autograd
    optimizer = ms("optimizer::step")
    after = ms("privtune::step") or optimizer
    split = {key: ms(key) for key in (*ENGINE_PARTS, "privtune::hooks(forward)")}
    split.update(
        forward=step - backward - after,
        autograd=autograd,
        engine_other=backward + after - autograd - optimizer - sum(split[k] for k in ENGINE_PARTS),
    )
    split["optimizer::step"] = optimizer
    split["bench::step"] = step
    return split


def best_privtune_kind(cells: list[dict[str, Any]], headline: tuple[str, int, int]) -> str:
    """The privtune kind with the lowest median CPU time per step in the headline configuration."""
    candidates = [c for c in cells if (c["model"], c["seq_len"], c["batch"]) == tuple(headline)
                  and c["kind"] in PRIVTUNE_MODES and c["status"] == "ok"]
    return min(candidates, key=lambda c: c["median_cpu_s"])["kind"] if candidates else "privtune-bk-auto"


def summarize_profile(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The profile section of the results, from the latest profile runs (one per kind)."""
    latest: dict[str, dict[str, Any]] = {}
    best = REFERENCE
    for run in runs:
        if run.get("phase") == "profile":
            latest[run["kind"]] = run
            best = run["kind"] if run["kind"] != REFERENCE else best
    if not latest:
        return None
    first = next(iter(latest.values()))
    out: dict[str, Any] = {"model": first["model"], "seq_len": first["seq_len"], "batch": first["batch"],
                           "best_kind": best, "kinds": {}}
    for kind, result in latest.items():
        if result["status"] != "ok":
            out["kinds"][kind] = {"status": result["status"], "reason": result.get("reason", "")}
            continue
        profile = result["profile"]
        out["kinds"][kind] = {
            "status": "ok",
            "wall_s_per_step": profile["wall_s_per_step"],
            "cpu_s_per_step": profile.get("cpu_s_per_step"),
            "split_wall_ms": _profile_split(profile["ranges"]),
            "split_cpu_ms": _profile_split(profile["cpu_ranges"]) if "cpu_ranges" in profile else None,
            "top_ops": profile["top_ops"],
        }
    return out


def run_profile(settings: Settings, cells: list[dict[str, Any]], log: Callable[[str], None],
                sink: Callable[[dict[str, Any]], None]) -> None:
    """Profile the fastest privtune kind (by CPU time) and the non-private step (headline configuration);
    the results go to ``sink``, the top-ops tables to ``benchmarks/out/profile.txt``."""
    model, seq_len, batch = settings.headline
    best = best_privtune_kind(cells, settings.headline)
    texts = []
    for kind in (REFERENCE, best):
        spec = WorkerSpec(model, seq_len, batch, kind, warmup=1, steps=settings.profile_steps, profile=True,
                          scratch=str(settings.scratch_dir))
        result = spawn(spec, settings, log)
        result["phase"] = "profile"
        sink(result)
        if result["status"] != "ok":
            log(f"profile {kind}: {result['status']}: {result.get('reason', '')}")
            continue
        profile = result["profile"]
        texts.append(f"== {KINDS[kind]} ({kind}), {MODELS[model].label}, T={seq_len}, B={batch}: "
                     f"{settings.profile_steps} profiled steps, {profile['wall_s_per_step']:.2f} s/step wall, "
                     f"{profile['cpu_s_per_step']:.2f} CPU s/step ==\n" + Path(profile["table_path"]).read_text())
        log(f"profile {kind}: {profile['wall_s_per_step']:.2f} s/step wall, {profile['cpu_s_per_step']:.2f} CPU s/step")
    (settings.scratch_dir / "profile.txt").write_text("\n\n".join(texts))


# ------------------------------------------------------------------------------------------- render


def _status_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "not run"
    if cell["status"] == "oom":
        return "OOM/skipped"
    if cell["status"] in ("failed", "timeout"):
        return f"unsupported: {cell['reason'][:110]}"
    return cell["status"]


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _gib(mib: float | None) -> str:
    return "-" if mib is None else f"{mib / GIB:.2f}"


def _find(cells: list[dict[str, Any]], model: str, seq_len: int, batch: int, kind: str) -> dict[str, Any] | None:
    for cell in cells:
        if (cell["model"], cell["seq_len"], cell["batch"], cell["kind"]) == (model, seq_len, batch, kind):
            return cell
    return None


def _config_table(cells: list[dict[str, Any]], model: str, seq_len: int, batch: int) -> list[str]:
    rows = [
        "| kind | wall s/step (median) | wall time vs non-private | CPU s/step (median) | CPU time vs "
        "non-private | step memory GiB | memory vs non-private | raw peak GiB | runs x steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        cell = _find(cells, model, seq_len, batch, kind)
        if cell is None:
            continue
        if cell["status"] != "ok":
            rows.append(f"| {KINDS[kind]} | {_status_text(cell)} | | | | | | | {cell['runs']} |")
            continue
        rows.append(
            f"| {KINDS[kind]} | {cell['median_s']:.2f} | {_x(cell['time_ratio'])} | {cell['median_cpu_s']:.2f} "
            f"| {_x(cell['cpu_ratio'])} | {_gib(cell['step_mem_mib'])} | {_x(cell['mem_ratio'])} "
            f"| {_gib(cell['raw_peak_mib'])} | {cell['ok_runs']} x {len(cell['all_step_s']) // max(cell['ok_runs'], 1)} |"
        )
    return rows


def _scan_table(cells: list[dict[str, Any]], model: str, axis: str, values: list[int], fixed: int) -> list[str]:
    label = "T" if axis == "seq_len" else "B"
    header = (" | ".join(f"{label}={v} time (wall / CPU)" for v in values) + " | "
              + " | ".join(f"{label}={v} memory" for v in values))
    rows = [f"| kind | {header} |", "|---|" + "---:|" * (2 * len(values))]
    for kind in KINDS:
        found = [_find(cells, model, v, fixed, kind) if axis == "seq_len" else _find(cells, model, fixed, v, kind)
                 for v in values]
        if sum(c is not None for c in found) < min(2, len(values)) or kind == REFERENCE:
            continue
        times = [(f"{_x(c['time_ratio'])} / {_x(c['cpu_ratio'])}" if c and c["status"] == "ok"
                  else ("-" if c is None else _status_text(c)[:40])) for c in found]
        mems = [(_x(c["mem_ratio"]) if c and c["status"] == "ok" else "-") for c in found]
        rows.append(f"| {KINDS[kind]} | " + " | ".join(times + mems) + " |")
    ref = [_find(cells, model, v, fixed, REFERENCE) if axis == "seq_len" else _find(cells, model, fixed, v, REFERENCE)
           for v in values]
    rows.append("| *non-private: wall / CPU s per step; step GiB* | "
                + " | ".join("-" if c is None or c["status"] != "ok" else f"{c['median_s']:.2f} / {c['median_cpu_s']:.2f} s"
                             for c in ref) + " | "
                + " | ".join("-" if c is None or c["status"] != "ok" else f"{_gib(c['step_mem_mib'])} GiB" for c in ref)
                + " |")
    return rows


def _main_sections(data: dict[str, Any]) -> list[str]:
    """The main phase's tables: the headline configuration, the other models, the T- and B-scans."""
    s = data["settings"]
    cells = data["cells"]
    head_model, head_t, head_b = s["headline"]
    lines = [
        f"### {MODELS[head_model].label}, T={head_t}, micro-batch {head_b}",
        "",
        *_config_table(cells, head_model, head_t, head_b),
        "",
    ]
    untied = _find(cells, head_model, head_t, head_b, "nonprivate-untied")
    ghost = _find(cells, head_model, head_t, head_b, "opacus-ghost")
    if untied and ghost and untied["status"] == "ok" and ghost["status"] == "ok":
        lines += [
            f"Opacus ghost refuses tied weights, so it trains an untied model ({untied['params_m']:.1f}M instead "
            f"of {(_find(cells, head_model, head_t, head_b, REFERENCE) or untied)['params_m']:.1f}M parameters). "
            f"Against the untied non-private step (same parameters) it costs "
            f"{ghost['median_s'] / untied['median_s']:.2f}x time and "
            f"{ghost['step_mem_mib'] / untied['step_mem_mib']:.2f}x step memory.",
            "",
        ]
    for model in s["models"]:
        if model == head_model:
            continue
        if _find(cells, model, head_t, head_b, REFERENCE):
            lines += [f"### {MODELS[model].label}, T={head_t}, micro-batch {head_b}", "",
                      *_config_table(cells, model, head_t, head_b), ""]
    lines += ["### Scaling with sequence length (ratios to the non-private step, micro-batch "
              f"{head_b})", ""]
    for model in s["models"]:
        lines += [f"**{MODELS[model].label}**", "", *_scan_table(cells, model, "seq_len", s["seq_lens"], head_b), ""]
    for model in s["batch_scan_models"]:
        lines += [f"### Scaling with micro-batch ({MODELS[model].label}, T={head_t})", "",
                  *_scan_table(cells, model, "batch", s["batch_sizes"], head_t), ""]
    return lines


def render_markdown(data: dict[str, Any]) -> str:
    """The Markdown tables (``step_cost.md``; the README includes them verbatim)."""
    s = data["settings"]
    head_model, head_t, head_b = s["headline"]
    meta = data["meta"]
    timed_runs = [r for r in data["runs"] if r.get("phase", "main") in ("main", "accumulate")]
    has_main = any(r.get("phase", "main") == "main" for r in data["runs"])
    versions: dict[str, list[Any]] = {}
    for run in timed_runs:
        entry = versions.setdefault(run.get("engine_sha1", "not recorded"), [0, set()])
        entry[0] += 1
        entry[1].add(run.get("git_head", "?"))
    known = [v for v in versions if v != "not recorded"]
    lines = [
        "privtune engine measured (hash of its source files): "
        + ", ".join(f"{v} ({n} runs" + (f", git {', '.join(sorted(heads))})" if v != "not recorded" else ")")
                    for v, (n, heads) in versions.items())
        + (" -- **several engine versions were measured in this run**" if len(known) > 1 else "") + ". "
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['cpu']}, {s['threads']} threads, torch "
        f"{meta['versions'].get('torch')}, transformers {meta['versions'].get('transformers')}, opacus "
        f"{meta['versions'].get('opacus')}, privtune {meta['versions'].get('privtune')}; shared machine, load "
        f"average {meta.get('load_min', 0):.1f}-{meta.get('load_max', 0):.1f} during the run). "
        "Each kind runs in its own process, kinds interleaved; "
        + (f"median of each run's median step time after {s['warmup']} warm-up step(s); {s['headline_rounds']} "
           f"rounds of {s['steps']} timed steps for the headline configuration, {s['rounds']} round(s) of "
           f"{s.get('scan_steps', s['steps'])} elsewhere. " if has_main else "")
        + "**Wall** "
        "= seconds per step by the clock (what the issue asks for; on this shared machine it swings by 2-4x "
        "within minutes as other jobs take our cores). **CPU** = CPU seconds (all threads, user + system) per "
        f"step with OMP_WAIT_POLICY={s.get('omp_wait_policy', 'PASSIVE')} (waiting threads sleep), i.e. the work "
        "done; it barely moves with the load, so its ratios are the reliable ones here (it under-weights "
        "serial work, such as noise generation, by up to 2x relative to wall time on an idle machine). "
        "**Step memory** = peak RSS during the steps minus the RSS after loading the model (activations, "
        "gradients, per-example quantities, AdamW state); the memory ratios use it. Raw peak = absolute peak "
        "RSS of the process during the steps."
        + "".join(f" Extra runs were added later with `{extra}`." for extra in meta.get("resumed_with", [])),
        "",
    ]
    if has_main:
        lines += _main_sections(data)
    accumulated = [c for c in data.get("accumulate") or [] if c["status"] == "ok"]
    if accumulated:
        k = accumulated[0]["micro_batches"]
        lines += [
            f"### A logical batch of {k} micro-batches ({MODELS[head_model].label}, T={head_t}, micro-batch {head_b})",
            "",
            f"Private fine-tuning takes one optimizer step per logical batch of hundreds of examples, built from "
            f"micro-batches. Here each step is {k} forward/backward passes over micro-batches of {head_b} and one "
            "optimizer step (privtune: one noise draw, clipped sums accumulated over the micro-batches; "
            "non-private: gradients accumulated), so the noise and AdamW are paid once per "
            f"{k * head_b} examples. Same method as the main tables (own process per kind, kinds interleaved, "
            f"{max(c['runs'] for c in accumulated)} round(s) of one timed step after one warm-up step).",
            "",
            "| kind | wall s/step (median) | wall time vs non-private | CPU s/step (median) | CPU time vs "
            "non-private | step memory GiB | memory vs non-private | runs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for cell in accumulated:
            lines.append(
                f"| {KINDS[cell['kind']]} | {cell['median_s']:.2f} | {_x(cell['time_ratio'])} | "
                f"{cell['median_cpu_s']:.2f} | {_x(cell['cpu_ratio'])} | {_gib(cell['step_mem_mib'])} | "
                f"{_x(cell['mem_ratio'])} | {cell['ok_runs']} |"
            )
        lines.append("")
    max_batch = data.get("max_batch")
    if max_batch:
        lines += [
            f"### Largest micro-batch under a {max_batch['cap_gib']:g} GiB step-memory cap "
            f"({MODELS[max_batch['model']].label}, T={max_batch['seq_len']})",
            "",
            "Predicted from a line fitted to the measured step memory (B-scan), then verified by real two-step "
            "runs: the reported B fits the cap and B+1 does not.",
            "",
            "| kind | largest micro-batch | memory per extra example (fit) | probes (B: step GiB) |",
            "|---|---:|---:|---|",
        ]
        for kind, entry in max_batch["kinds"].items():
            fit = entry.get("fit")
            probes = ", ".join(
                f"{p['batch']}: {_gib(p['step_mem_mib']) if p['status'] in ('ok',) else p['status']}"
                for p in sorted(entry["probes"], key=lambda p: p["batch"])
            )
            value = entry["max_batch"] if entry["status"] == "ok" else entry["status"][:80]
            per = "-" if not fit else f"{fit['mib_per_example']:.0f} MiB"
            lines.append(f"| {KINDS[kind]} | {value} | {per} | {probes} |")
        lines.append("")
    profile = data.get("profile")
    if profile and profile.get("kinds"):
        best = profile["best_kind"]
        ref = profile["kinds"].get(REFERENCE, {})
        mine = profile["kinds"].get(best, {})
        if ref.get("status") == "ok" and mine.get("status") == "ok":
            use_cpu = bool(ref.get("split_cpu_ms")) and bool(mine.get("split_cpu_ms"))
            key = "split_cpu_ms" if use_cpu else "split_wall_ms"
            unit = "CPU ms" if use_cpu else "ms"
            total = mine[key].get("bench::step") or 1.0
            lines += [
                f"### Where the remaining overhead goes ({KINDS[best]}, {MODELS[profile['model']].label}, "
                f"T={profile['seq_len']}, B={profile['batch']})",
                "",
                "Each step component timed (inclusive) in its own process per kind, "
                + ("in CPU milliseconds per step (all threads; robust to the machine's load)" if use_cpu
                   else "in wall milliseconds per step")
                + f", over {data['settings'].get('profile_steps', 2)} profiled steps after one warm-up step. The "
                "engine's functions are wrapped in timing ranges in the worker only. Top-ops tables (torch.profiler, "
                "wall-clock self time): `benchmarks/out/profile.txt`.",
                "",
                f"| component | non-private {unit} | privtune {unit} | difference | share of the privtune step |",
                "|---|---:|---:|---:|---:|",
            ]
            for label, name in PROFILE_ROWS:
                a = ref[key].get(name, 0.0)
                b = mine[key].get(name, 0.0)
                lines.append(f"| {label} | {a:.0f} | {b:.0f} | {b - a:+.0f} | {100 * b / total:.0f}% |")
            top = ", ".join(f"`{t['op']}` {t['self_ms_per_step']:.0f} ms" for t in mine["top_ops"][:8])
            noise = mine[key].get("privtune::noise", 0.0)
            norms = mine[key].get("privtune::norms", 0.0)
            reference = ref[key].get("bench::step") or 1.0
            lines += [
                "",
                f"**Floor.** Drawing the noise (one Gaussian per parameter, {noise:.0f} {unit}) and the per-example "
                f"norms (Gram matrices, {norms:.0f} {unit}) are work a non-private step does not do at all: together "
                f"{100 * (noise + norms) / reference:.0f}% of the non-private step. Everything else in the private "
                "step is the non-private step's own work (the same forward, the backward without the weight "
                "gradients, and the clipped sums, which are the same matrix products as those weight gradients), so "
                f"with PyTorch's Gaussian sampler and these Gram products the private step costs about "
                f"{1 + (noise + norms) / reference:.2f}x a non-private one even if that shared work costs exactly "
                "what it costs there. The noise is paid once per logical batch (see the accumulation table), the "
                "norms once per micro-batch.",
                "",
                f"Top self-time ops of the privtune step (wall ms per step): {top}.",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def render_plot(data: dict[str, Any], path: Path) -> None:
    """Ratio bars per kind (headline) and ratio-vs-T / ratio-vs-B lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = data["settings"]
    cells = data["cells"]
    head_model, head_t, head_b = s["headline"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    title = f"{MODELS[head_model].label}, T={head_t}, B={head_b}"
    bars = cells
    if not _find(cells, head_model, head_t, head_b, REFERENCE) and data.get("accumulate"):
        bars = data["accumulate"]  # an accumulate-only run: its logical-batch ratios
        title += f" x{bars[0]['micro_batches']} micro-batches"
    kinds = [k for k in KINDS if k != REFERENCE and _find(bars, head_model, head_t, head_b, k)]

    def ratios(field: str) -> list[float]:
        return [(_find(bars, head_model, head_t, head_b, k) or {}).get(field) or 0.0 for k in kinds]

    xs = range(len(kinds))
    axes[0].bar([x - 0.27 for x in xs], ratios("time_ratio"), width=0.27, label="wall time")
    axes[0].bar(list(xs), ratios("cpu_ratio"), width=0.27, label="CPU time")
    axes[0].bar([x + 0.27 for x in xs], ratios("mem_ratio"), width=0.27, label="step memory")
    axes[0].axhline(1.0, color="black", lw=0.8)
    axes[0].axhline(1.10, color="grey", lw=0.8, ls="--", label="1.10x")
    axes[0].set_xticks(list(xs), [KINDS[k].replace(" (", "\n(").replace(" + ", "\n+ ") for k in kinds],
                       rotation=60, ha="right", fontsize=7)
    axes[0].set_ylabel("ratio to non-private step")
    axes[0].set_title(title)
    axes[0].legend(fontsize=8)
    styles = ["-", "--", ":", "-."]
    for index, model in enumerate(s["models"]):
        for color_index, kind in enumerate(k for k in KINDS if k != REFERENCE):
            ys = [(_find(cells, model, t, head_b, kind) or {}).get("cpu_ratio") for t in s["seq_lens"]]
            if sum(y is not None for y in ys) >= 2:
                axes[1].plot(s["seq_lens"], [math.nan if y is None else y for y in ys], marker="o",
                             ls=styles[index % 4], color=f"C{color_index}",
                             label=f"{KINDS[kind]}" if index == 0 else None)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(s["seq_lens"], [str(t) for t in s["seq_lens"]])
    axes[1].axhline(1.0, color="black", lw=0.8)
    axes[1].set_xlabel("sequence length T (" + ", ".join(
        f"{styles[i % 4]} {MODELS[m].label}" for i, m in enumerate(s["models"])) + ")", fontsize=8)
    axes[1].set_ylabel("CPU-time ratio to non-private")
    axes[1].set_title(f"CPU-time ratio vs T (B={head_b})")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=6)
    for model in s["batch_scan_models"]:
        for color_index, kind in enumerate(k for k in KINDS if k != REFERENCE):
            ys = [(_find(cells, model, head_t, b, kind) or {}).get("cpu_ratio") for b in s["batch_sizes"]]
            if sum(y is not None for y in ys) >= 2:
                axes[2].plot(s["batch_sizes"], [math.nan if y is None else y for y in ys], marker="o",
                             color=f"C{color_index}", label=KINDS[kind])
    axes[2].set_xscale("log", base=2)
    axes[2].set_xticks(s["batch_sizes"], [str(b) for b in s["batch_sizes"]])
    axes[2].axhline(1.0, color="black", lw=0.8)
    axes[2].set_xlabel("micro-batch B")
    axes[2].set_title(f"CPU-time ratio vs micro-batch (T={head_t})")
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def splice_readme(readme: Path, markdown: str) -> bool:
    """Replace the text between the step_cost markers in ``readme``; False if the markers are absent."""
    if not readme.exists():
        return False
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{markdown}{README_END}{tail}")
    return True


def write_outputs(data: dict[str, Any], settings: Settings, log: Callable[[str], None]) -> None:
    """JSON, Markdown, plot, and the README splice."""
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    stem = settings.out_name
    (settings.results_dir / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    markdown = render_markdown(data)
    (settings.results_dir / f"{stem}.md").write_text(markdown)
    render_plot(data, settings.results_dir / f"{stem}.png")
    if settings.readme is not None and splice_readme(settings.readme, markdown):
        log(f"updated the table in {settings.readme}")
    log(f"wrote {settings.results_dir}/{stem}.{{json,md,png}}")


# --------------------------------------------------------------------------------------------- CLI


def _csv(kind: type) -> Callable[[str], list[Any]]:
    return lambda text: [kind(part) for part in text.split(",") if part]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=_csv(str), default=None, help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--seq-lens", type=_csv(int), default=None, help="T-scan (at the headline B)")
    parser.add_argument("--batch-sizes", type=_csv(int), default=None, help="B-scan (at the headline T)")
    parser.add_argument("--batch-scan-models", type=_csv(str), default=None, help="models of the B-scan")
    parser.add_argument("--kinds", type=_csv(str), default=None, help=f"comma list of {', '.join(KINDS)}")
    parser.add_argument("--headline", default=None, help="MODEL:T:B (default gpt2-124m:128:8)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds for non-headline configurations")
    parser.add_argument("--headline-rounds", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per process")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per process (headline)")
    parser.add_argument("--scan-steps", type=int, default=None,
                        help="timed steps per process for the other configurations")
    parser.add_argument("--untied-reference", choices=("headline", "all"), default="headline",
                        help="where to measure nonprivate-untied (the reference for opacus-ghost)")
    parser.add_argument("--mem-cap-gib", type=float, default=None, help="step-memory cap of the max-batch search")
    parser.add_argument("--max-batch-kinds", type=_csv(str), default=None)
    parser.add_argument("--max-batch-limit", type=int, default=256)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="profile the fastest privtune kind and the non-private step")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--accumulate", type=int, default=4,
                        help="micro-batches per optimizer step in the accumulate phase (headline model, T, B)")
    parser.add_argument("--accumulate-rounds", type=int, default=None, help="rounds of the accumulate phase")
    parser.add_argument("--phases", type=_csv(str), default=["main", "accumulate", "max_batch", "profile"],
                        help="subset of main,accumulate,max_batch,profile")
    parser.add_argument("--worker-timeout", type=int, default=1500, help="seconds per worker process")
    parser.add_argument("--worker-mem-limit-gib", type=float, default=16.0,
                        help="address-space limit of each worker (RLIMIT_AS); beyond it a kind reports OOM")
    parser.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE"), default="PASSIVE",
                        help="OMP_WAIT_POLICY of the workers (PASSIVE: idle threads sleep, CPU time = work)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default benchmarks/results (benchmarks/out/quick with --quick)")
    parser.add_argument("--scratch-dir", type=Path, default=HERE / "out")
    parser.add_argument("--out-name", default=DEFAULT_OUT_NAME,
                        help=f"stem of the results files (default {DEFAULT_OUT_NAME}); another stem writes "
                             "NAME.{json,md,png} and skips the README splice unless --readme is given")
    parser.add_argument("--readme", type=Path, default=None,
                        help="file whose step_cost markers receive the tables ('' to skip; default "
                             "benchmarks/README.md with the default --out-name, none otherwise)")
    parser.add_argument("--quick", action="store_true", help="tiny 2-layer smoke run (~2-3 minutes)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--render-only", type=Path, default=None, help="re-render outputs from a results JSON")
    parser.add_argument("--resume", type=Path, default=None,
                        help="add the --phases given here to an existing results JSON (e.g. --phases profile)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> Settings:
    """Defaults (full or ``--quick``) overridden by explicit flags."""
    if args.quick:
        defaults: dict[str, Any] = dict(
            models=["tiny-gpt2", "tiny-llama"], seq_lens=[32], batch_sizes=[2, 4],
            batch_scan_models=["tiny-gpt2"], headline="tiny-gpt2:32:4", rounds=1, headline_rounds=1,
            warmup=1, steps=2, scan_steps=2, mem_cap_gib=0.1, results_dir=args.scratch_dir / "quick",
            max_batch_kinds=["nonprivate", "privtune-bk-auto"],
        )
    else:
        defaults = dict(
            models=["gpt2-124m", "smollm2-135m"], seq_lens=[64, 128, 256], batch_sizes=[4, 8, 16],
            batch_scan_models=["gpt2-124m"], headline="gpt2-124m:128:8", rounds=1, headline_rounds=3,
            warmup=1, steps=2, scan_steps=1, mem_cap_gib=6.0, results_dir=HERE / "results",
            max_batch_kinds=list(DEFAULT_MAX_BATCH_KINDS),
        )

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    head_model, head_t, head_b = pick("headline").split(":")
    kinds = args.kinds or list(KINDS)
    models = pick("models")
    for name in [*kinds, *pick("max_batch_kinds")]:
        if name not in KINDS:
            raise SystemExit(f"unknown kind {name!r}; choose from {', '.join(KINDS)}")
    for name in [*models, head_model]:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if not args.out_name or "/" in args.out_name or args.out_name.startswith("."):
        raise SystemExit(f"--out-name must be a plain file stem, got {args.out_name!r}")
    if args.readme is None:  # only the default stem feeds the README's table
        readme = HERE / "README.md" if args.out_name == DEFAULT_OUT_NAME else None
    else:
        readme = None if str(args.readme) in ("", ".") else args.readme
    return Settings(
        models=models, seq_lens=pick("seq_lens"), batch_sizes=pick("batch_sizes"),
        batch_scan_models=pick("batch_scan_models"), kinds=kinds, headline=(head_model, int(head_t), int(head_b)),
        rounds=pick("rounds"), headline_rounds=pick("headline_rounds"), warmup=pick("warmup"), steps=pick("steps"),
        scan_steps=pick("scan_steps"),
        untied_reference=args.untied_reference, mem_cap_gib=pick("mem_cap_gib"),
        max_batch_kinds=[k for k in pick("max_batch_kinds") if k in kinds],
        max_batch_limit=args.max_batch_limit, profile=args.profile, profile_steps=args.profile_steps,
        phases=args.phases, worker_timeout=args.worker_timeout, worker_mem_limit_gib=args.worker_mem_limit_gib,
        omp_wait_policy=args.omp_wait_policy,
        results_dir=pick("results_dir"), scratch_dir=args.scratch_dir, readme=None if args.quick else readme,
        quick=args.quick, out_name=args.out_name, accumulate=args.accumulate,
        accumulate_rounds=args.accumulate_rounds if args.accumulate_rounds is not None else pick("headline_rounds"),
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "opacus", "privtune", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        result = run_worker(WorkerSpec(**json.loads(args.worker)))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    settings = resolve(args)
    settings.scratch_dir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"{datetime.datetime.now():%H:%M:%S} {message}", flush=True)

    if args.render_only is not None:
        data = json.loads(args.render_only.read_text())
        data["cells"] = aggregate(data["runs"])
        data["accumulate"] = aggregate(data["runs"], phase="accumulate")
        data["profile"] = summarize_profile(data["runs"]) or data.get("profile")
        write_outputs(data, settings, log)
        return 0
    cells = plan_cells(settings)
    for cell in cells:
        log(f"plan: {cell.model} T={cell.seq_len} B={cell.batch} rounds={cell.rounds} kinds={kinds_for(cell, settings)}")
    if args.dry_run:
        return 0
    runs_path = settings.scratch_dir / ("runs_quick.jsonl" if settings.quick else "runs.jsonl")
    previous = json.loads(args.resume.read_text()) if args.resume is not None else None
    if previous is None:
        runs_path.write_text("")  # a resumed run appends
    runs: list[dict[str, Any]] = previous["runs"] if previous else []

    def sink(result: dict[str, Any]) -> None:
        runs.append(result)
        with runs_path.open("a") as handle:
            handle.write(json.dumps(result) + "\n")

    started = time.perf_counter()
    command = " ".join(["python benchmarks/step_cost.py", shlex.join(sys.argv[1:])]).strip()
    data: dict[str, Any] = previous or {
        "meta": {"command": command, "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}", "cpu": _cpu_name(),
                 "python": platform.python_version(), "versions": _versions()},
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()},
                     "threads": 2, "kind_labels": dict(KINDS)},
        "runs": runs, "cells": [],
    }
    if previous:
        data["meta"]["resumed_with"] = [*data["meta"].get("resumed_with", []), command]
        data["cells"] = aggregate(runs)

    def save() -> None:
        data["cells"] = aggregate(data["runs"])
        data["accumulate"] = aggregate(data["runs"], phase="accumulate")
        data["profile"] = summarize_profile(data["runs"])
        loads = [v for r in data["runs"] for v in (r.get("load_start"), r.get("load_end")) if v is not None]
        minutes_key = "resume_minutes" if previous else "wall_minutes"
        data["meta"].update({"load_min": min(loads, default=0.0), "load_max": max(loads, default=0.0),
                             minutes_key: (time.perf_counter() - started) / 60})
        write_outputs(data, settings, log)

    if "main" in settings.phases:
        run_main(settings, log, sink, first_round=1 + max((r.get("round", -1) for r in runs), default=-1))
        save()
    if "accumulate" in settings.phases and settings.accumulate > 1:
        run_accumulate(settings, log, sink,
                       first_round=1 + max((r.get("round", -1) for r in runs if r.get("phase") == "accumulate"),
                                           default=-1))
        save()
    if "max_batch" in settings.phases and settings.max_batch_kinds:
        data["max_batch"] = run_max_batch(settings, data["cells"], log, sink)
        save()
    if "profile" in settings.phases and settings.profile:
        run_profile(settings, data["cells"], log, sink)
        save()
    log(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
