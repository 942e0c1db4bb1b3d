"""`privtune epsilon`, `privtune noise`, `privtune plan`: the JSON contract, tables for people, clean errors."""

from __future__ import annotations

import json

import pytest

import privtune.cli as cli
from privtune.accounting import calibrate_noise, compute_epsilon

FAST = ["--pld-discretization", "1e-2"]


@pytest.fixture
def run(monkeypatch, capsys):
    """Run the real dispatcher with only the accounting commands registered (other command modules are other
    people's and need not be importable for these to work)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("privtune.cli.accounting",))

    def _run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def test_epsilon_json_contract(run):
    code, out, err = run(
        "epsilon", "--sample-rate", "0.01", "--noise-multiplier", "1.0", "--steps", "1000", "--delta", "1e-5",
        "--accountant", "rdp", "--json", *FAST,
    )  # fmt: skip
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["epsilon"] == pytest.approx(compute_epsilon(0.01, 1.0, 1000, 1e-5, "rdp"), rel=1e-12)
    assert set(result["epsilons"]) == {"rdp", "pld", "gdp"}
    assert result["sampling"] == "poisson" and result["neighbouring"] == "add_or_remove_one"


@pytest.mark.parametrize("accountant", ["pld", "gdp"])
def test_epsilon_json_other_accountants(run, accountant):
    code, out, _ = run(
        "epsilon", "--sample-rate", "0.01", "--noise-multiplier", "1.0", "--steps", "1000", "--delta", "1e-5",
        "--accountant", accountant, "--json", *FAST,
    )  # fmt: skip
    result = json.loads(out)
    assert code == 0
    assert result["accountant"] == accountant
    assert result["epsilon"] == result["epsilons"][accountant]
    assert result["epsilons"]["gdp"] < result["epsilons"]["pld"] < result["epsilons"]["rdp"]


def test_noise_json_contract(run):
    code, out, err = run(
        "noise", "--target-epsilon", "3", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "1000",
        "--accountant", "rdp", "--json", *FAST,
    )  # fmt: skip
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["noise_multiplier"] == pytest.approx(calibrate_noise(3.0, 1e-5, 0.01, 1000), rel=1e-12)
    assert result["epsilons"]["rdp"] <= 3.0
    assert result["calibration_seconds"] >= 0


def test_noise_json_pld(run):
    code, out, _ = run(
        "noise", "--target-epsilon", "3", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "1000",
        "--accountant", "pld", "--json", *FAST,
    )  # fmt: skip
    result = json.loads(out)
    assert code == 0 and result["accountant"] == "pld"
    assert result["epsilons"]["pld"] <= 3.0 < result["epsilons"]["rdp"]


def test_epsilon_from_dataset_batch_and_epochs(run):
    code, out, _ = run(
        "epsilon", "--dataset-size", "67349", "--batch-size", "1000", "--epochs", "3", "--noise-multiplier", "0.8",
        "--json", *FAST,
    )  # fmt: skip
    result = json.loads(out)
    assert code == 0
    assert result["steps"] == 203 and result["delta"] == pytest.approx(1 / (2 * 67349))
    assert result["sample_rate"] == pytest.approx(1000 / 67349)


def test_epochs_with_sample_rate_counts_ceil_epochs_over_q(run):
    _, out, _ = run(
        "epsilon", "--sample-rate", "0.3", "--epochs", "3", "--noise-multiplier", "2", "--delta", "1e-5", "--json",
        *FAST,
    )  # fmt: skip
    assert json.loads(out)["steps"] == 10  # 3 / 0.3 = 10 exactly (decimal arithmetic, not 10.000000000000002)


def test_tables_for_people(run):
    code, out, _ = run(
        "epsilon", "--sample-rate", "0.01", "--noise-multiplier", "1.0", "--steps", "1000", "--delta", "1e-5", *FAST
    )
    assert code == 0
    lines = out.splitlines()
    for name in ("rdp", "pld", "gdp"):
        assert any(line.split()[:1] == [name] for line in lines)
    assert "<- selected" in out and "underestimates" in out and "add_or_remove_one" in out
    code, out, _ = run("noise", "--target-epsilon", "8", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "100")
    assert code == 0 and "noise multiplier sigma =" in out


def test_plan_for_people_and_for_scripts(run):
    code, out, _ = run("plan", "--dataset-size", "67349", "--target-epsilon", "3", *FAST)
    assert code == 0
    for text in ("logical batch size B", "sigma_eff = sigma/q", "learning rate", "Why:", "rdp", "pld", "gdp"):
        assert text in out
    code, out, _ = run(
        "plan", "--dataset-size", "67349", "--target-epsilon", "3", "--batch-size", "1000", "--epochs", "3",
        "--delta", "5e-6", "--json", *FAST,
    )  # fmt: skip
    result = json.loads(out)
    assert code == 0
    assert (result["batch_size"], result["steps"], result["delta"]) == (1000, 203, 5e-6)
    assert {"noise_multiplier", "sigma_eff", "learning_rate", "reasoning", "epsilon"} <= set(result)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["epsilon", "--sample-rate", "1.5", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5"], "(0, 1]"),
        (["epsilon", "--sample-rate", "0", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5"], "(0, 1]"),
        (["epsilon", "--sample-rate", "0.1", "--noise-multiplier", "-1", "--steps", "10", "--delta", "1e-5"], "> 0"),
        (["epsilon", "--sample-rate", "0.1", "--noise-multiplier", "1", "--steps", "0", "--delta", "1e-5"], "at least 1"),
        (["epsilon", "--sample-rate", "0.1", "--noise-multiplier", "nan", "--steps", "5", "--delta", "1e-5"], "NaN"),
        (["epsilon", "--sample-rate", "0.1", "--noise-multiplier", "1", "--steps", "5"], "--delta"),
        (["epsilon", "--noise-multiplier", "1", "--steps", "5", "--delta", "1e-5"], "--sample-rate"),
        (["epsilon", "--sample-rate", "0.1", "--noise-multiplier", "1", "--delta", "1e-5"], "--steps"),
        (
            ["epsilon", "--sample-rate", "0.1", "--noise-multiplier", "1", "--steps", "5", "--delta", "1e-3",
             "--dataset-size", "1000"],
            "1/N",
        ),  # fmt: skip
        (
            ["epsilon", "--sample-rate", "0.1", "--noise-multiplier", "1", "--steps", "5", "--delta", "1e-14",
             "--accountant", "pld"],
            "rdp",
        ),  # fmt: skip
        (["noise", "--target-epsilon", "0.001", "--sample-rate", "1", "--steps", "1000000", "--delta", "1e-5"],
         "no noise multiplier"),  # fmt: skip
        (["noise", "--target-epsilon", "-3", "--sample-rate", "0.1", "--steps", "10", "--delta", "1e-5"], "> 0"),
        (["plan", "--dataset-size", "1000", "--target-epsilon", "3", "--delta", "0.001"], "1/N"),
        (["plan", "--dataset-size", "0", "--target-epsilon", "3"], "N=0"),
    ],
)
def test_bad_input_is_one_clean_line_exit_2(run, argv, message):
    code, out, err = run(*argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "error:" in err and message in err
    assert "Traceback" not in err


def test_json_never_contains_nan_or_infinity(run):
    code, out, _ = run(
        "epsilon", "--sample-rate", "0.5", "--noise-multiplier", "0.01", "--steps", "10", "--delta", "1e-5",
        "--accountant", "gdp", "--json", *FAST,
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)  # strict JSON
    assert result["epsilon"] is None and any("infinite" in note for note in result["notes"])
    assert "NaN" not in out and "Infinity" not in out
