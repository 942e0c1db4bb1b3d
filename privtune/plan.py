"""One object that hands the training loop its sampler, noise multiplier and ledger, so they cannot disagree.

>>> plan = PrivacyPlan.create(dataset_size=67_349, target_epsilon=8, batch_size=1000, epochs=3, seed=0)
>>> plan.steps, round(plan.noise_multiplier, 3)
(203, 0.579)
>>> sampler, ledger = plan.sampler(), plan.new_ledger()      # doctest: +SKIP
>>> engine = PrivacyEngine(model, **plan.engine_kwargs(ledger))  # doctest: +SKIP

The plan calibrates sigma for exactly the number of steps its sampler yields (``count_steps``), with the
accountant of the sampler's sampling scheme. The ledger then records what the loop really did, and
``plan.report(ledger)`` shows both the planned and the spent epsilon under every accountant.

:func:`suggest_hyperparameters` (``privtune plan``) proposes a configuration following Li, Tramer, Liang,
Hashimoto, "Large Language Models Can Be Strong Differentially Private Learners" (ICLR 2022).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from privtune.accounting.accountants import (
    ACCOUNTANT_LABELS,
    DEFAULT_PLD_DISCRETIZATION,
    NEIGHBOURING,
    check_dataset_size,
    check_delta,
    check_epsilon,
    check_noise_multiplier,
    check_sampling,
    check_steps,
    compute_epsilons,
    epsilon_notes,
    json_epsilons,
)
from privtune.accounting.calibration import calibrate_noise
from privtune.accounting.ledger import Ledger
from privtune.errors import AccountingError
from privtune.sampling import PoissonSampler, ShuffleSampler

PLAN_FORMAT = "privtune.plan/1"

#: Rules for the default delta. The paper's code (private-transformers) used 1/(2N); others use N^-1.1, which
#: is smaller for every N > 1024 (e.g. N = 67,349: 7.4e-6 versus 5.0e-6).
DELTA_RULES: dict[str, Any] = {
    "1/(2N)": lambda n: 1.0 / (2 * n),
    "N^-1.1": lambda n: float(n) ** -1.1,
}
DEFAULT_DELTA_RULE = "1/(2N)"
DEFAULT_MICRO_BATCH_SIZE = 32

# Hyper-parameter defaults from the paper (full fine-tuning with DP-Adam).
PAPER_LEARNING_RATE = 5e-4
PAPER_LEARNING_RATE_BATCH = 1024
PAPER_CLIPPING_NORM = 0.1


def default_delta(dataset_size: int, rule: str = DEFAULT_DELTA_RULE) -> float:
    """The default delta for ``N`` examples: ``1/(2N)`` (the paper's code), or ``N^-1.1`` with that rule."""
    n = check_dataset_size(dataset_size)
    if rule not in DELTA_RULES:
        raise AccountingError(f"unknown delta rule {rule!r}: choose one of {', '.join(DELTA_RULES)}")
    return DELTA_RULES[rule](n)


def count_steps(
    dataset_size: int,
    batch_size: int,
    *,
    epochs: float | None = None,
    steps: int | None = None,
    sampling: str = "poisson",
    per_epoch: bool = False,
) -> int:
    """The number of noisy steps the loop will run, which is what the noise must be calibrated for.

    * ``steps`` given: exactly that many.
    * Poisson (and shuffle with a fresh subset per step): an epoch is ``N / B`` steps in expectation, so
      ``T = ceil(epochs * N / B)`` (exact rational arithmetic; as private-transformers' ``ceil(epochs / q)``).
    * Shuffle per epoch: ``T = ceil(epochs * (N // B))`` (each epoch drops the last partial batch).
    """
    n = check_dataset_size(dataset_size)
    b = _check_batch_size(batch_size, n)
    check_sampling(sampling)
    if (epochs is None) == (steps is None):
        raise AccountingError("give exactly one of epochs or steps")
    if steps is not None:
        return check_steps(steps)
    e = _exact(epochs, "epochs")
    if e <= 0:
        raise AccountingError(f"epochs={epochs!r} must be > 0")
    if sampling == "shuffle" and per_epoch:
        count = math.ceil(e * (n // b))
    else:
        count = math.ceil(e * n / b)
    return check_steps(count)


def _exact(value: float, what: str) -> Fraction:
    try:
        # str() so that 0.1 epochs means 1/10, not the binary float nearest to it.
        x = Fraction(str(value)) if isinstance(value, float) else Fraction(value)
    except (TypeError, ValueError):
        raise AccountingError(f"{what}={value!r} must be a finite number") from None
    return x


def _check_batch_size(batch_size: int, dataset_size: int) -> int:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or not 1 <= batch_size <= dataset_size
    ):
        raise AccountingError(
            f"logical batch size B={batch_size!r} must be a whole number in 1..N={dataset_size} "
            "(the expected number of examples per noisy step)"
        )
    return int(batch_size)


@dataclass(frozen=True)
class PrivacyPlan:
    """Everything the loop needs, derived from (N, target epsilon, delta, batch size, epochs or steps).

    Build it with :meth:`create`; rebuild a saved one with :meth:`from_dict` (no recalibration).
    """

    dataset_size: int
    batch_size: int
    sample_rate: float
    steps: int
    noise_multiplier: float
    target_epsilon: float
    delta: float
    delta_rule: str
    accountant: str
    sampling: str
    micro_batch_size: int
    seed: int
    per_epoch: bool = False
    epochs: float | None = None
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def create(
        cls,
        *,
        dataset_size: int,
        target_epsilon: float,
        batch_size: int,
        delta: float | None = None,
        epochs: float | None = None,
        steps: int | None = None,
        accountant: str = "rdp",
        sampling: str = "poisson",
        micro_batch_size: int | None = None,
        seed: int | None = None,
        per_epoch: bool = False,
        pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
    ) -> PrivacyPlan:
        """Calibrate sigma so that the planned run meets ``target_epsilon`` at ``delta`` under ``accountant``.

        ``delta=None`` uses ``1/(2N)``; a delta >= 1/N is refused. ``seed=None`` draws a secret seed (kept in
        the plan for resuming). ``per_epoch`` applies to shuffle sampling only (see
        :class:`~privtune.sampling.ShuffleSampler`).
        """
        n = check_dataset_size(dataset_size)
        target = check_epsilon(target_epsilon)
        b = _check_batch_size(batch_size, n)
        check_sampling(sampling)
        if per_epoch and sampling != "shuffle":
            raise AccountingError(
                "per_epoch applies to shuffle sampling only; Poisson sampling has no epochs"
            )
        if delta is None:
            delta_value, delta_rule = default_delta(n), DEFAULT_DELTA_RULE
        else:
            delta_value, delta_rule = check_delta(delta, n), "given"
        t = count_steps(n, b, epochs=epochs, steps=steps, sampling=sampling, per_epoch=per_epoch)
        q = b / n
        sigma = calibrate_noise(
            target, delta_value, q, t, accountant, sampling, pld_discretization=pld_discretization
        )
        m = min(DEFAULT_MICRO_BATCH_SIZE, b) if micro_batch_size is None else micro_batch_size
        sampler = _make_sampler(n, b, q, t, m, seed, sampling, per_epoch)  # validates m, draws a seed if None
        return cls(
            dataset_size=n,
            batch_size=b,
            sample_rate=q,
            steps=t,
            noise_multiplier=sigma,
            target_epsilon=target,
            delta=delta_value,
            delta_rule=delta_rule,
            accountant=accountant,
            sampling=sampling,
            micro_batch_size=sampler.micro_batch_size,
            seed=sampler.seed,
            per_epoch=per_epoch,
            epochs=None if epochs is None else float(epochs),
            pld_discretization=pld_discretization,
            notes=_notes(sampling, per_epoch),
        )

    # -- what the loop uses ------------------------------------------------------------------------------

    @property
    def expected_batch_size(self) -> float:
        """``q N`` (= B): the engine divides the noisy gradient sum by this, never by the realised size."""
        return self.sample_rate * self.dataset_size

    @property
    def neighbouring(self) -> str:
        return NEIGHBOURING[self.sampling]

    @property
    def sigma_eff(self) -> float:
        """``sigma / q``: the paper's effective noise; larger batches (larger q) at fixed epsilon lower it."""
        return self.noise_multiplier / self.sample_rate

    def sampler(self) -> PoissonSampler | ShuffleSampler:
        """The sampler that yields exactly ``steps`` batches, drawn as the accountant assumes."""
        return _make_sampler(
            self.dataset_size,
            self.batch_size,
            self.sample_rate,
            self.steps,
            self.micro_batch_size,
            self.seed,
            self.sampling,
            self.per_epoch,
        )

    def new_ledger(self) -> Ledger:
        """An empty ledger of this plan's sampling (and so neighbouring relation)."""
        return Ledger(sampling=self.sampling, dataset_size=self.dataset_size)

    def engine_kwargs(self, ledger: Ledger | None = None) -> dict[str, Any]:
        """Keyword arguments for the engine: ``noise_multiplier``, ``expected_batch_size``, ``sample_rate`` and
        ``ledger`` (a new one unless given; the engine calls ``ledger.record(sample_rate=, noise_multiplier=)``
        at every step)."""
        if ledger is None:
            ledger = self.new_ledger()
        self._check_ledger(ledger)
        return {
            "noise_multiplier": self.noise_multiplier,
            "expected_batch_size": self.expected_batch_size,
            "sample_rate": self.sample_rate,
            "ledger": ledger,
        }

    def _check_ledger(self, ledger: Ledger) -> None:
        if ledger.sampling != self.sampling:
            raise AccountingError(
                f"the ledger records {ledger.sampling} sampling but this plan samples by {self.sampling}: "
                "use plan.new_ledger()"
            )

    # -- reports -----------------------------------------------------------------------------------------

    def epsilons(self, *, pld_discretization: float | None = None) -> dict[str, float | None]:
        """Epsilon of the full planned run under every accountant (pld is None for delta < 1e-12)."""
        disc = self.pld_discretization if pld_discretization is None else pld_discretization
        return compute_epsilons(
            self.sample_rate,
            self.noise_multiplier,
            self.steps,
            self.delta,
            self.sampling,
            pld_discretization=disc,
        )

    def report(
        self, ledger: Ledger | None = None, *, pld_discretization: float | None = None
    ) -> dict[str, Any]:
        """The plan and its epsilon under every accountant; with a ledger, also what has been spent so far."""
        disc = self.pld_discretization if pld_discretization is None else pld_discretization
        epsilons = self.epsilons(pld_discretization=disc)
        report: dict[str, Any] = {
            "dataset_size": self.dataset_size,
            "batch_size": self.batch_size,
            "expected_batch_size": self.expected_batch_size,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "epochs": self.epochs,
            "noise_multiplier": self.noise_multiplier,
            "sigma_eff": self.sigma_eff,
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "delta_rule": self.delta_rule,
            "calibrated_with": self.accountant,
            "sampling": self.sampling,
            "neighbouring": self.neighbouring,
            "batch_selection": _batch_selection(self.sampling, self.per_epoch),
            "accounting_matches_sampler": not (self.sampling == "shuffle" and self.per_epoch),
            "epsilon": json_epsilons(epsilons),
            "accountants": dict(ACCOUNTANT_LABELS),
            "notes": list(self.notes) + epsilon_notes(epsilons, self.delta),
        }
        if ledger is not None:
            self._check_ledger(ledger)
            report["spent"] = ledger.report(self.delta, pld_discretization=disc)
        return report

    # -- saving ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = list(self.notes)
        data["format"] = PLAN_FORMAT
        data["neighbouring"] = self.neighbouring
        data["expected_batch_size"] = self.expected_batch_size
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyPlan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise AccountingError(f"not a privtune plan (expected format {PLAN_FORMAT!r})")
        fields = {k: v for k, v in data.items() if k not in ("format", "neighbouring", "expected_batch_size")}
        fields["notes"] = tuple(fields.get("notes", ()))
        try:
            plan = cls(**fields)
        except TypeError as exc:
            raise AccountingError(f"corrupt plan: {exc}") from None
        n = check_dataset_size(plan.dataset_size)
        check_delta(plan.delta, n)
        check_noise_multiplier(plan.noise_multiplier)
        check_sampling(plan.sampling)
        if plan.sample_rate != _check_batch_size(plan.batch_size, n) / n:
            raise AccountingError("corrupt plan: sample_rate is not batch_size / dataset_size")
        return plan

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> PrivacyPlan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise AccountingError(f"plan is not valid JSON ({exc})") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivacyPlan:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())


def _make_sampler(
    n: int, b: int, q: float, steps: int, m: int, seed: int | None, sampling: str, per_epoch: bool
) -> PoissonSampler | ShuffleSampler:
    if sampling == "poisson":
        return PoissonSampler(n, q, steps, m, seed)
    return ShuffleSampler(n, b, steps, m, seed, per_epoch=per_epoch)


def _batch_selection(sampling: str, per_epoch: bool) -> str:
    if sampling == "poisson":
        return "Poisson: each example independently with probability q; batch sizes vary"
    if per_epoch:
        return "shuffled once per epoch, fixed-size batches (accounted as independent sampling without replacement)"
    return "fixed-size batches, a fresh uniformly random subset without replacement at every step"


def _notes(sampling: str, per_epoch: bool) -> tuple[str, ...]:
    notes = ["GDP-CLT is an approximation known to underestimate epsilon; RDP and PLD are upper bounds."]
    if sampling == "shuffle":
        notes.append(
            "shuffle sampling is accounted with replace-one neighbours: a replaced example moves the clipped sum "
            "by up to 2C, so the accountants see sigma/2; epsilons are not comparable to Poisson ones."
        )
        if per_epoch:
            notes.append(
                "per-epoch shuffling is NOT what the accountant analyses (it assumes an independent subset per "
                "step); shuffling can leak more (Chua et al., ICML 2024). Use per_epoch=False for a proven bound."
            )
    return tuple(notes)


# ----------------------------------------------------------------------------------------------------------
# Hyper-parameter suggestion (privtune plan)


def suggest_batch_size(dataset_size: int) -> int:
    """Logical batch size: ``max(1024, 1.5% of N)`` for N >= 65,536, else ``4 sqrt(N)`` (continuous at 65,536).

    The paper used 1000 (SST-2, N = 67k), 2000 (QNLI, 105k) and 6000 (QQP/MNLI, 364k/393k): a sample rate of
    about 1.5-2% and at least ~1000 examples. For small data sets a batch of 1000 would be most of the data
    (little amplification by subsampling), hence the square-root scaling.
    """
    n = check_dataset_size(dataset_size)
    if n >= 65_536:
        return min(n, max(1024, round(0.015 * n)))
    return max(1, min(n, round(4 * math.sqrt(n))))


def suggest_epochs(dataset_size: int, batch_size: int) -> int:
    """``max(3, round(3 B / 1000))`` epochs, raised (up to 30) so that the run has at least 100 steps.

    The paper trained 3 epochs at B = 1000, 6 at 2000 and 18 at 6000, i.e. about as many epochs per 1000 of
    batch; a larger batch means fewer steps per epoch, so more epochs keep the number of updates up.
    """
    epochs = max(3, round(3 * batch_size / 1000))
    steps_per_epoch = dataset_size / batch_size
    if epochs * steps_per_epoch < 100:
        epochs = max(epochs, min(30, math.ceil(100 / steps_per_epoch)))
    return epochs


def suggest_hyperparameters(
    dataset_size: int,
    target_epsilon: float,
    delta: float | None = None,
    epochs: float | None = None,
    batch_size: int | None = None,
    *,
    accountant: str = "rdp",
    sampling: str = "poisson",
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> dict[str, Any]:
    """A DP fine-tuning configuration following Li et al. (ICLR 2022), with its reasoning and the resulting
    epsilon under every accountant.

    Returns a dict with ``batch_size``, ``epochs``, ``steps``, ``sample_rate``, ``noise_multiplier``,
    ``sigma_eff`` (= sigma / q), ``learning_rate`` (full fine-tuning), ``learning_rate_lora``, ``warmup_steps``,
    ``max_grad_norm``, ``delta``, ``epsilon`` (per accountant) and ``reasoning`` (a list of sentences), which
    carries what the measurements in ``benchmarks/utility.py`` taught.
    """
    n = check_dataset_size(dataset_size)
    target = check_epsilon(target_epsilon)
    reasoning: list[str] = []
    lora_learning_rate = 5e-3  # measured with benchmarks/utility.py, see the reasoning below
    small_signal_budget = 50_000  # N x epsilon below which private fine-tuning lost most of its accuracy here

    if batch_size is None:
        b = suggest_batch_size(n)
        if n >= 65_536:
            reasoning.append(
                f"Logical batch B = {b}: large batches are the paper's first finding (it used ~1000-6000, a sample "
                "rate of ~1.5-2%); here max(1024, 1.5% of N)."
            )
        else:
            reasoning.append(
                f"Logical batch B = {b} = 4*sqrt(N): the paper's ~1000 would be a large share of only {n} examples "
                "(little privacy amplification by subsampling), so the batch scales with sqrt(N) below N = 65,536."
            )
    else:
        b = _check_batch_size(batch_size, n)
        reasoning.append(f"Logical batch B = {b} as given.")
    q = b / n

    if epochs is None:
        e: float = suggest_epochs(n, b)
        raised = e > max(3, round(3 * b / 1000))
        reasoning.append(
            f"Epochs = {e}: the paper trained 3 epochs at B = 1000, 6 at 2000 and 18 at 6000, scaling epochs with "
            "the batch so the number of updates stays in the hundreds"
            + (" (raised here so that the run has at least 100 steps)." if raised else ".")
        )
    else:
        e = epochs
        reasoning.append(f"Epochs = {e} as given.")

    if delta is None:
        d = default_delta(n)
        reasoning.append(
            f"delta = 1/(2N) = {d:.3g}, as in the paper's code (N^-1.1 = {n**-1.1:.3g} is stricter)."
        )
    else:
        d = check_delta(delta, n)
    steps = count_steps(n, b, epochs=e, sampling=sampling)
    sigma = calibrate_noise(target, d, q, steps, accountant, sampling, pld_discretization=pld_discretization)
    reasoning.append(
        f"{steps} steps at q = {q:.4g}: noise multiplier sigma = {sigma:.4g} reaches epsilon = {target:g} under "
        f"{accountant.upper()} (calibrated for exactly the steps the sampler yields)."
    )
    reasoning.append(
        f"Short of compute for {steps} steps of {b}? Keep the whole data set and train for fewer steps "
        "(privtune train --steps T): each step still samples at q = B/N, and at a small q sigma barely grows with the "
        "number of steps (E2E, N = 42,061, B = 256, epsilon 3: sigma 0.60 for 8 steps, 0.61 for 16), whereas "
        "cutting N (--train-limit) raises q and sigma (512 rows at B = 64: 0.89 for the same 8 steps)."
    )
    sigma_eff = sigma / q
    noise_per_update = sigma * PAPER_CLIPPING_NORM / b
    reasoning.append(
        f"Effective noise sigma_eff = sigma/q = {sigma_eff:.4g}: at fixed epsilon and epochs, sigma grows more "
        "slowly than q, so a larger batch lowers the noise in each averaged update "
        f"(std sigma*C/B = {noise_per_update:.3g} per coordinate at C = {PAPER_CLIPPING_NORM})."
    )
    lr = PAPER_LEARNING_RATE * b / PAPER_LEARNING_RATE_BATCH
    lr = min(max(lr, 5e-5), 2e-3)
    reasoning.append(
        f"Learning rate {lr:.3g} (DP-Adam): the paper used 5e-4 at B ~ 1000 for full fine-tuning; scaled linearly "
        f"with B/{PAPER_LEARNING_RATE_BATCH} (its learning-rate x batch-size grid has the good runs on a diagonal), "
        "kept within [5e-5, 2e-3]. The paper kept 5e-4 for its 2000-6000 batches too: if unsure, try both."
    )
    lr_lora = lora_learning_rate
    reasoning.append(
        f"LoRA: learning rate {lr_lora:.3g} instead. Its B matrices start at zero and only the adapters and the "
        "head train, so each trained coordinate gets a larger share of the clipped norm C; measured on MiniLM/SST-2 "
        "(epsilon = 3): 5e-3 reached 71% at N = 8,000 where 2e-3 stayed at chance; full fine-tuning at 2e-3 "
        "diverged (loss rising) on N = 2,000 and 5e-4-1e-3 hardly moved. For a short run a larger rate: E2E with "
        "SmolLM2, 8 steps of 256 sampled from all 42,061 rows, 1e-2 reached BLEU 48.6 at epsilon 3 against 50.2 "
        "for the best non-private run (3e-3); 3e-2 diverged even without noise."
    )
    reasoning.append(
        f"Clipping norm C = {PAPER_CLIPPING_NORM}: the paper clips small, so that almost every per-example gradient "
        "is clipped and the update is an average of gradient directions. With DP-Adam the exact value matters little "
        "once nearly all examples are clipped (noise scales with C, Adam divides the scale out): C = 1.0 and 0.1 gave "
        "the same accuracy in our SST-2 proxy."
    )
    reasoning.append(
        "Warm-up: none by default (0 steps). A warm-up over the first ~10% of steps made no measurable difference in "
        "our short runs; keep it for long runs with a large learning rate."
    )
    reasoning.append(
        "Classifiers: an encoder classifies the sentence embedding its checkpoint was trained to produce (mean pooling "
        "for sentence-transformers checkpoints such as minilm-l6, whose [CLS] pooler was never trained) with a "
        "zero-initialised head at its own, larger learning rate (3e-2: the head must travel far, the pretrained body "
        "must not); a causal LM answers by text infilling (label words) with its own LM head, no new head."
    )
    budget = n * target
    if budget < small_signal_budget:
        reasoning.append(
            f"Warning: N x epsilon = {budget:,.6g} is small (the paper's SST-2 at epsilon = 3: ~200,000). The averaged "
            "noise then dominates most coordinates of a full model, and DP-Adam moves each of them by about the "
            "learning rate at every step. Expect a large gap to non-private training; prefer LoRA (or fewer trained "
            "parameters), more data or a larger epsilon. On MiniLM/SST-2 with N = 8,000 at epsilon = 3 (1 epoch), the "
            "private runs ranked the dev sentences well (AUC 0.85) but, with one learning rate for head and body, their "
            "logits drifted towards one class (53% full, 71% LoRA); a head learning rate of its own gave 65% full and "
            "79% LoRA, against 85% and 83% non-private."
        )
    epsilons = compute_epsilons(q, sigma, steps, d, sampling, pld_discretization=pld_discretization)
    return {
        "dataset_size": n,
        "target_epsilon": target,
        "delta": d,
        "batch_size": b,
        "epochs": e,
        "steps": steps,
        "sample_rate": q,
        "noise_multiplier": sigma,
        "sigma_eff": sigma_eff,
        "learning_rate": lr,
        "learning_rate_lora": lr_lora,
        "warmup_steps": 0,
        "max_grad_norm": PAPER_CLIPPING_NORM,
        "optimizer": "DP-Adam",
        "accountant": accountant,
        "sampling": sampling,
        "neighbouring": NEIGHBOURING[sampling],
        "epsilon": json_epsilons(epsilons),
        "accountants": dict(ACCOUNTANT_LABELS),
        "notes": epsilon_notes(epsilons, d),
        "reasoning": reasoning,
    }
