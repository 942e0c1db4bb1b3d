"""PrivacyPlan hands the loop a sampler, a noise multiplier and a ledger that agree; suggestions."""

from __future__ import annotations

import json

import pytest

from privtune.accounting import Ledger, compute_epsilon
from privtune.errors import AccountingError
from privtune.plan import PrivacyPlan, default_delta, suggest_batch_size, suggest_hyperparameters
from privtune.sampling import PoissonSampler, ShuffleSampler

COARSE = 1e-2


@pytest.fixture(scope="module")
def plan():
    """The default plan, calibrated once for the tests that only read it."""
    return _plan()


def _plan(**overrides):
    args = {
        "dataset_size": 5000,
        "target_epsilon": 3.0,
        "batch_size": 250,
        "epochs": 2,
        "seed": 0,
        "micro_batch_size": 64,
        "pld_discretization": COARSE,
    }
    args.update(overrides)
    return PrivacyPlan.create(**args)


def test_plan_is_consistent(plan):
    assert plan.sample_rate == 250 / 5000
    assert plan.steps == 40
    assert plan.expected_batch_size == pytest.approx(250)
    assert plan.delta == 1 / 10000  # default 1/(2N)
    assert plan.delta_rule == "1/(2N)"
    assert plan.sigma_eff == pytest.approx(plan.noise_multiplier / plan.sample_rate)
    assert compute_epsilon(plan.sample_rate, plan.noise_multiplier, plan.steps, plan.delta) <= 3.0
    sampler = plan.sampler()
    assert isinstance(sampler, PoissonSampler)
    assert len(sampler) == plan.steps
    assert (sampler.sample_rate, sampler.dataset_size, sampler.seed) == (plan.sample_rate, 5000, 0)
    assert plan.new_ledger().sampling == "poisson"


def test_loop_with_plan_spends_exactly_the_planned_epsilon(plan):
    kwargs = plan.engine_kwargs()
    assert set(kwargs) == {"noise_multiplier", "expected_batch_size", "sample_rate", "ledger"}
    ledger = kwargs["ledger"]
    for _batch in plan.sampler():  # what the engine does at every step, empty batches included
        ledger.record(sample_rate=kwargs["sample_rate"], noise_multiplier=kwargs["noise_multiplier"])
    assert ledger.steps == plan.steps
    assert ledger.epsilon(plan.delta) == pytest.approx(plan.epsilons()["rdp"], rel=1e-12)
    report = plan.report(ledger)
    assert report["spent"]["steps"] == plan.steps
    assert report["spent"]["epsilon"]["rdp"] == pytest.approx(report["epsilon"]["rdp"], rel=1e-12)


def test_report_shows_every_accountant_and_the_sampling(plan):
    report = plan.report()
    assert set(report["epsilon"]) == {"rdp", "pld", "gdp"}
    assert report["epsilon"]["gdp"] < report["epsilon"]["pld"] < report["epsilon"]["rdp"] <= 3.0
    assert report["sampling"] == "poisson"
    assert report["neighbouring"] == "add_or_remove_one"
    assert report["accounting_matches_sampler"] is True
    assert {"noise_multiplier", "sample_rate", "steps", "delta"} <= set(report)
    json.dumps(report, allow_nan=False)


def test_shuffle_plan_uses_replace_one(plan):
    poisson = plan
    plan = _plan(sampling="shuffle", per_epoch=True, accountant="pld")
    assert isinstance(plan.sampler(), ShuffleSampler)
    assert plan.steps == 2 * (5000 // 250)
    assert plan.new_ledger().neighbouring == "replace_one"
    report = plan.report()
    assert report["epsilon"]["pld"] <= 3.0
    assert report["neighbouring"] == "replace_one"
    assert report["accounting_matches_sampler"] is False  # per-epoch shuffling: flagged
    assert any("per-epoch" in note for note in report["notes"])
    assert plan.noise_multiplier > poisson.noise_multiplier


def test_plan_round_trips_without_recalibrating(tmp_path):
    plan = _plan(seed=None)
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = PrivacyPlan.load(path)
    assert loaded == plan
    assert list(loaded.sampler().iterate(start_step=30)) == list(plan.sampler().iterate(start_step=30))
    assert PrivacyPlan.from_dict(plan.to_dict()) == plan


def test_wrong_ledger_is_refused(plan):
    with pytest.raises(AccountingError, match="plan.new_ledger"):
        plan.engine_kwargs(Ledger(sampling="shuffle"))


def test_steps_instead_of_epochs():
    plan = _plan(epochs=None, steps=17)
    assert plan.steps == 17 and len(plan.sampler()) == 17


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"delta": 2e-4}, "1/N"),  # 1/N = 2e-4
        ({"delta": 0.0}, r"\(0, 1\)"),
        ({"epochs": 2, "steps": 10}, "exactly one of epochs or steps"),
        ({"batch_size": 0}, "logical batch size"),
        ({"batch_size": 5001}, "logical batch size"),
        ({"dataset_size": 0}, "N=0"),
        ({"target_epsilon": 0}, "> 0"),
        ({"accountant": "gdp"}, "underestimates"),
        ({"per_epoch": True}, "shuffle sampling only"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
    ],
)
def test_bad_plans(overrides, message):
    with pytest.raises(AccountingError, match=message):
        _plan(**overrides)


def test_default_delta_rules():
    assert default_delta(1000) == 1 / 2000
    assert default_delta(1000, "N^-1.1") == pytest.approx(1000**-1.1)
    with pytest.raises(AccountingError):
        default_delta(1000, "1/N")


# -- suggestions (privtune plan) ------------------------------------------------------------------------------


def test_suggestion_follows_the_paper_for_glue_sizes():
    s = suggest_hyperparameters(67349, 3.0, pld_discretization=COARSE)
    assert s["batch_size"] == 1024 and s["epochs"] == 3
    assert s["delta"] == pytest.approx(1 / (2 * 67349))
    assert s["sample_rate"] == pytest.approx(1024 / 67349)
    assert s["sigma_eff"] == pytest.approx(s["noise_multiplier"] / s["sample_rate"])
    assert s["learning_rate"] == pytest.approx(5e-4)
    assert s["max_grad_norm"] == 0.1
    assert s["epsilon"]["rdp"] <= 3.0 and s["epsilon"]["gdp"] < s["epsilon"]["pld"] < s["epsilon"]["rdp"]
    assert len(s["reasoning"]) >= 5 and all(isinstance(line, str) for line in s["reasoning"])
    json.dumps(s, allow_nan=False)
    big = suggest_hyperparameters(392702, 8.0, pld_discretization=COARSE)
    assert 5000 < big["batch_size"] < 7000 and 15 <= big["epochs"] <= 20  # paper: 6000 and 18
    assert big["learning_rate"] > s["learning_rate"]  # linear scaling with the batch (capped)


def test_suggestion_for_small_data_uses_sqrt_batch_and_enough_steps():
    assert suggest_batch_size(10_000) == 400
    assert suggest_batch_size(65_536) == 1024  # continuous where the two rules meet
    s = suggest_hyperparameters(2000, 8.0, pld_discretization=COARSE)
    assert s["batch_size"] == 179
    assert s["steps"] >= 100
    assert any(line.startswith("Warning: N x epsilon = 16,000 is small") for line in s["reasoning"])
    tiny = suggest_hyperparameters(100, 0.005, pld_discretization=COARSE)
    assert any(line.startswith("Warning: N x epsilon = 0.5 is small") for line in tiny["reasoning"])  # not "= 0"


def test_suggestion_respects_given_values():
    s = suggest_hyperparameters(50_000, 5.0, delta=1e-6, epochs=4, batch_size=500, pld_discretization=COARSE)
    assert (s["batch_size"], s["epochs"], s["delta"]) == (500, 4, 1e-6)
    assert s["steps"] == 400
