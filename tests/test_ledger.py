"""The ledger: epsilon from the steps actually taken; runs; JSON round trips for checkpoints."""

from __future__ import annotations

import json
import math

import pytest

from privtune.accounting import ACCOUNTANTS, Ledger, LedgerRun, compute_epsilon, epsilon_for_runs
from privtune.errors import AccountingError

DELTA = 1e-5
COARSE = 1e-3


def _ledger(runs, sampling="poisson"):
    ledger = Ledger(sampling=sampling)
    for q, sigma, steps in runs:
        for _ in range(steps):
            ledger.record(sample_rate=q, noise_multiplier=sigma)
    return ledger


def test_identical_steps_compress_into_one_run():
    ledger = _ledger([(0.01, 1.0, 250)])
    assert ledger.steps == len(ledger) == 250
    assert ledger.runs == (LedgerRun(0.01, 1.0, 250),)
    assert ledger.epsilon(DELTA) == pytest.approx(compute_epsilon(0.01, 1.0, 250, DELTA), rel=1e-12)


def test_record_many_steps_at_once_equals_step_by_step():
    one_by_one = _ledger([(0.01, 1.0, 40), (0.02, 0.9, 10)])
    batched = Ledger()
    batched.record(sample_rate=0.01, noise_multiplier=1.0, steps=40)
    batched.record(sample_rate=0.02, noise_multiplier=0.9, steps=10)
    assert batched == one_by_one
    batched.record(sample_rate=0.02, noise_multiplier=0.9, steps=0)  # no-op
    assert batched.steps == 50


def test_changing_sigma_mid_training_is_accounted():
    ledger = _ledger([(0.01, 1.0, 100), (0.01, 0.7, 100), (0.01, 1.0, 100)])
    assert [run.steps for run in ledger.runs] == [100, 100, 100]
    eps = ledger.epsilon(DELTA)
    # More than 300 steps at sigma = 1.0, less than 300 steps at sigma = 0.7; equal to the composition of the runs.
    assert compute_epsilon(0.01, 1.0, 300, DELTA) < eps < compute_epsilon(0.01, 0.7, 300, DELTA)
    assert eps == pytest.approx(epsilon_for_runs([(0.01, 1.0, 200), (0.01, 0.7, 100)], DELTA), rel=1e-12)


def test_early_stopping_spends_less_than_planned():
    planned = compute_epsilon(0.01, 1.0, 1000, DELTA)
    stopped = _ledger([(0.01, 1.0, 400)])
    assert stopped.epsilon(DELTA) < planned


def test_empty_ledger_spent_nothing():
    ledger = Ledger()
    assert ledger.steps == 0
    for accountant in ACCOUNTANTS:
        assert ledger.epsilon(DELTA, accountant) == 0.0


def test_epsilons_under_every_accountant():
    ledger = _ledger([(0.02, 1.0, 100)])
    eps = ledger.epsilons(DELTA, pld_discretization=COARSE)
    assert set(eps) == {"rdp", "pld", "gdp"}
    assert eps["gdp"] < eps["pld"] < eps["rdp"]


def test_save_load_round_trip_gives_identical_epsilons(tmp_path):
    ledger = _ledger([(1000 / 67349, 0.8221, 120), (1000 / 67349, 0.75, 3), (0.3, 2.5, 1)], sampling="shuffle")
    path = tmp_path / "ledger.json"
    ledger.save(path)
    loaded = Ledger.load(path)
    assert loaded == ledger
    assert loaded.sampling == "shuffle" and loaded.neighbouring == "replace_one"
    assert loaded.runs == ledger.runs  # floats survive JSON exactly
    for accountant in ("pld", "gdp"):
        assert loaded.epsilon(DELTA, accountant, pld_discretization=COARSE) == ledger.epsilon(
            DELTA, accountant, pld_discretization=COARSE
        )
    assert Ledger.from_json(ledger.to_json()).to_dict() == ledger.to_dict()


def test_resume_from_checkpoint_continues_the_record(tmp_path):
    ledger = _ledger([(0.01, 1.0, 60)])
    ledger.save(tmp_path / "ckpt.json")
    resumed = Ledger.load(tmp_path / "ckpt.json")
    for _ in range(40):
        resumed.record(sample_rate=0.01, noise_multiplier=1.0)
    assert resumed.runs == (LedgerRun(0.01, 1.0, 100),)
    assert resumed.epsilon(DELTA) == pytest.approx(compute_epsilon(0.01, 1.0, 100, DELTA), rel=1e-12)


def test_json_is_compact_and_self_describing():
    ledger = _ledger([(0.01, 1.0, 100_000)])
    data = json.loads(ledger.to_json())
    assert data["format"] == "privtune.ledger/1"
    assert data["sampling"] == "poisson" and data["neighbouring"] == "add_or_remove_one"
    assert data["runs"] == [[0.01, 1.0, 100_000]]
    assert data["steps"] == 100_000


def test_report_is_json_ready():
    report = _ledger([(0.5, 0.01, 10)]).report(DELTA, pld_discretization=COARSE)
    json.dumps(report, allow_nan=False)  # no NaN/Infinity
    assert report["epsilon"]["gdp"] is None  # infinite epsilon -> null, with a note
    assert any("infinite" in note for note in report["notes"])


def test_delta_too_large_for_the_dataset_is_refused():
    ledger = Ledger(dataset_size=1000)
    ledger.record(sample_rate=0.1, noise_multiplier=1.0)
    with pytest.raises(AccountingError, match="1/N"):
        ledger.epsilon(0.002)
    assert math.isfinite(ledger.epsilon(1e-4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 0.0}, "outside"),
        ({"sample_rate": 2.0}, "outside"),
        ({"noise_multiplier": -0.5}, "> 0"),
        ({"noise_multiplier": 0.0}, "no privacy guarantee"),
        ({"noise_multiplier": float("nan")}, "NaN"),
        ({"steps": -1}, "at least 1"),
    ],
)
def test_bad_records_are_refused(kwargs, message):
    args = {"sample_rate": 0.01, "noise_multiplier": 1.0, "steps": 1}
    args.update(kwargs)
    ledger = Ledger()
    with pytest.raises(AccountingError, match=message):
        ledger.record(**args)
    assert ledger.steps == 0


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"format": "something else"}',
        '{"format": "privtune.ledger/1", "sampling": "poisson", "runs": [[0.1, 1.0]]}',
        '{"format": "privtune.ledger/1", "sampling": "poisson", "runs": [[0.1, 1.0, 5]], "steps": 6}',
        '{"format": "privtune.ledger/1", "sampling": "poisson", "runs": [[1.5, 1.0, 5]]}',
        '{"format": "privtune.ledger/1", "sampling": "poisson", "neighbouring": "replace_one", "runs": []}',
        '{"format": "privtune.ledger/1", "sampling": "bootstrap", "runs": []}',
    ],
)
def test_corrupt_ledgers_are_refused(text):
    with pytest.raises(AccountingError):
        Ledger.from_json(text)


def test_unknown_sampling_is_refused():
    with pytest.raises(AccountingError, match="unknown sampling"):
        Ledger(sampling="bootstrap")
