"""``privtune epsilon``, ``privtune noise`` and ``privtune plan``.

With ``--json`` each prints one JSON object on stdout (``epsilon`` has the key ``"epsilon"``, ``noise`` the key
``"noise_multiplier"``); without it, a small table for people. An infinite epsilon is written as JSON ``null``
(JSON has no infinity). Bad input raises :class:`~privtune.errors.AccountingError`, which the dispatcher prints as
one line (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from fractions import Fraction
from typing import Any

from privtune.accounting.accountants import (
    ACCOUNTANT_LABELS,
    ACCOUNTANTS,
    DEFAULT_PLD_DISCRETIZATION,
    NEIGHBOURING,
    SAMPLINGS,
    check_dataset_size,
    check_delta,
    check_sample_rate,
    compute_epsilons,
    epsilon_notes,
    json_epsilons,
)
from privtune.accounting.calibration import calibrate_noise
from privtune.errors import AccountingError
from privtune.plan import count_steps, default_delta, suggest_hyperparameters


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``epsilon``, ``noise`` and ``plan`` sub-commands."""
    p = subparsers.add_parser(
        "epsilon",
        help="epsilon of a DP-SGD run under RDP, PLD and GDP-CLT",
        description="Epsilon spent by T noisy steps with sample rate q and noise multiplier sigma, at delta.",
    )
    _add_run_arguments(p)
    p.add_argument(
        "--noise-multiplier", type=float, required=True, metavar="S", help="noise std / clipping norm"
    )
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp", help="accountant for 'epsilon' (rdp)")
    _add_common_arguments(p)
    p.set_defaults(func=run_epsilon)

    p = subparsers.add_parser(
        "noise",
        help="noise multiplier for a target epsilon",
        description="The smallest noise multiplier with epsilon <= target at delta after T steps at sample rate q.",
    )
    _add_run_arguments(p)
    p.add_argument("--target-epsilon", type=float, required=True, metavar="E")
    p.add_argument(
        "--accountant", choices=("rdp", "pld"), default="rdp", help="accountant to calibrate with (rdp)"
    )
    _add_common_arguments(p)
    p.set_defaults(func=run_noise)

    p = subparsers.add_parser(
        "plan",
        help="suggest DP fine-tuning hyper-parameters (Li et al., ICLR 2022)",
        description="Suggest batch size, epochs, noise and learning rate for a data set and a target epsilon, "
        "with the reasoning and the resulting epsilon under every accountant.",
    )
    p.add_argument("--dataset-size", type=int, required=True, metavar="N", help="number of training examples")
    p.add_argument("--target-epsilon", type=float, required=True, metavar="E")
    p.add_argument("--delta", type=float, metavar="D", help="default 1/(2N); must be < 1/N")
    p.add_argument("--epochs", type=float, metavar="K", help="default: suggested")
    p.add_argument("--batch-size", type=int, metavar="B", help="logical batch size; default: suggested")
    p.add_argument(
        "--accountant", choices=("rdp", "pld"), default="rdp", help="accountant to calibrate with (rdp)"
    )
    _add_common_arguments(p)
    p.set_defaults(func=run_plan)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sample-rate", type=float, metavar="Q", help="q in (0, 1]; or give --batch-size and --dataset-size"
    )
    p.add_argument("--steps", type=int, metavar="T", help="number of noisy steps; or give --epochs")
    p.add_argument("--epochs", type=float, metavar="K", help="epochs, counted as ceil(K / q) steps")
    p.add_argument(
        "--delta", type=float, metavar="D", help="required unless --dataset-size is given (then 1/(2N))"
    )
    p.add_argument(
        "--dataset-size", type=int, metavar="N", help="number of training examples (checks delta < 1/N)"
    )
    p.add_argument("--batch-size", type=int, metavar="B", help="logical batch size (q = B / N)")


def _add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampling", choices=SAMPLINGS, default="poisson", help="batch sampling (poisson)")
    p.add_argument(
        "--pld-discretization",
        type=float,
        default=DEFAULT_PLD_DISCRETIZATION,
        metavar="X",
        help=f"PLD grid width; larger is faster and slightly looser (default {DEFAULT_PLD_DISCRETIZATION:g})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")


# ----------------------------------------------------------------------------------------------------------


def _resolve_run(args: argparse.Namespace) -> dict[str, Any]:
    """Sample rate, steps and delta from the arguments, with the same rules as the training loop."""
    n = None if args.dataset_size is None else check_dataset_size(args.dataset_size)
    if args.batch_size is not None:
        if n is None:
            raise AccountingError("--batch-size needs --dataset-size (q = B / N)")
        if args.sample_rate is not None:
            raise AccountingError("give --sample-rate or --batch-size, not both")
        if not 1 <= args.batch_size <= n:
            raise AccountingError(f"--batch-size {args.batch_size} must be in 1..N={n}")
        q = args.batch_size / n
    elif args.sample_rate is not None:
        q = check_sample_rate(args.sample_rate)
    else:
        raise AccountingError("give --sample-rate Q (or --batch-size B with --dataset-size N)")

    if (args.steps is None) == (args.epochs is None):
        raise AccountingError("give exactly one of --steps T or --epochs K")
    if args.steps is not None:
        steps = args.steps
    elif n is not None and args.batch_size is not None:
        steps = count_steps(n, args.batch_size, epochs=args.epochs, sampling=args.sampling)
    else:
        if not (args.epochs > 0 and math.isfinite(args.epochs)):
            raise AccountingError(f"--epochs {args.epochs} must be a number > 0")
        steps = math.ceil(Fraction(repr(args.epochs)) / Fraction(repr(q)))

    if args.delta is None:
        if n is None:
            raise AccountingError("give --delta D (or --dataset-size N for the default 1/(2N))")
        delta = default_delta(n)
    else:
        delta = check_delta(args.delta, n)
    return {"sample_rate": q, "steps": steps, "delta": delta, "dataset_size": n}


def _epsilons(
    q: float, sigma: float, steps: int, delta: float, args: argparse.Namespace
) -> dict[str, float | None]:
    return compute_epsilons(q, sigma, steps, delta, args.sampling, pld_discretization=args.pld_discretization)


def run_epsilon(args: argparse.Namespace) -> int:
    run = _resolve_run(args)
    sigma = args.noise_multiplier
    epsilons = _epsilons(run["sample_rate"], sigma, run["steps"], run["delta"], args)
    if epsilons[args.accountant] is None:
        raise AccountingError(f"{epsilon_notes(epsilons, run['delta'])[0]}; use --accountant rdp")
    result = {
        "epsilon": json_epsilons(epsilons)[args.accountant],
        "accountant": args.accountant,
        "epsilons": json_epsilons(epsilons),
        "notes": epsilon_notes(epsilons, run["delta"]),
        "delta": run["delta"],
        "sample_rate": run["sample_rate"],
        "noise_multiplier": sigma,
        "steps": run["steps"],
        "dataset_size": run["dataset_size"],
        "sampling": args.sampling,
        "neighbouring": NEIGHBOURING[args.sampling],
        "accountants": dict(ACCOUNTANT_LABELS),
    }
    if args.json:
        _print_json(result)
        return 0
    print(_header(run, args.sampling, f"sigma={sigma:g}"))
    print(_epsilon_table(epsilons, selected=args.accountant))
    _print_notes(result["notes"])
    return 0


def run_noise(args: argparse.Namespace) -> int:
    run = _resolve_run(args)
    start = time.perf_counter()
    sigma = calibrate_noise(
        args.target_epsilon,
        run["delta"],
        run["sample_rate"],
        run["steps"],
        args.accountant,
        args.sampling,
        pld_discretization=args.pld_discretization,
    )
    seconds = time.perf_counter() - start
    epsilons = _epsilons(run["sample_rate"], sigma, run["steps"], run["delta"], args)
    result = {
        "noise_multiplier": sigma,
        "target_epsilon": args.target_epsilon,
        "accountant": args.accountant,
        "epsilons": json_epsilons(epsilons),
        "notes": epsilon_notes(epsilons, run["delta"]),
        "delta": run["delta"],
        "sample_rate": run["sample_rate"],
        "steps": run["steps"],
        "dataset_size": run["dataset_size"],
        "sigma_eff": sigma / run["sample_rate"],
        "sampling": args.sampling,
        "neighbouring": NEIGHBOURING[args.sampling],
        "calibration_seconds": seconds,
        "accountants": dict(ACCOUNTANT_LABELS),
    }
    if args.json:
        _print_json(result)
        return 0
    print(_header(run, args.sampling, f"target epsilon={args.target_epsilon:g}"))
    print(
        f"noise multiplier sigma = {sigma:.6g}  (calibrated with {args.accountant.upper()} in {seconds:.2f} s; "
        f"sigma/q = {sigma / run['sample_rate']:.4g})"
    )
    print(_epsilon_table(epsilons, selected=args.accountant))
    _print_notes(result["notes"])
    return 0


def run_plan(args: argparse.Namespace) -> int:
    result = suggest_hyperparameters(
        args.dataset_size,
        args.target_epsilon,
        delta=args.delta,
        epochs=args.epochs,
        batch_size=args.batch_size,
        accountant=args.accountant,
        sampling=args.sampling,
        pld_discretization=args.pld_discretization,
    )
    if args.json:
        _print_json(result)
        return 0
    rows = [
        ("dataset size N", f"{result['dataset_size']}"),
        ("logical batch size B", f"{result['batch_size']}"),
        ("sample rate q = B/N", f"{result['sample_rate']:.5g}"),
        ("epochs", f"{result['epochs']:g}"),
        ("steps T", f"{result['steps']}"),
        ("delta", f"{result['delta']:.3g}"),
        ("noise multiplier sigma", f"{result['noise_multiplier']:.5g}"),
        ("sigma_eff = sigma/q", f"{result['sigma_eff']:.5g}"),
        ("learning rate (DP-Adam)", f"{result['learning_rate']:.3g}"),
        ("clipping norm C", f"{result['max_grad_norm']:g}"),
        ("sampling", f"{result['sampling']} ({result['neighbouring']})"),
    ]
    width = max(len(name) for name, _ in rows)
    print(
        f"Suggested DP fine-tuning for N={result['dataset_size']}, target epsilon={result['target_epsilon']:g}:"
    )
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print()
    print("Why:")
    for line in result["reasoning"]:
        print(f"  - {line}")
    print()
    print(_epsilon_table(result["epsilon"], selected=result["accountant"]))
    _print_notes(result["notes"])
    return 0


# ----------------------------------------------------------------------------------------------------------


def _header(run: dict[str, Any], sampling: str, extra: str) -> str:
    n = "" if run["dataset_size"] is None else f"N={run['dataset_size']}, "
    return (
        f"{n}q={run['sample_rate']:.5g}, T={run['steps']} steps, delta={run['delta']:.3g}, {extra}, "
        f"sampling={sampling} ({NEIGHBOURING[sampling]})"
    )


def _epsilon_table(epsilons: dict[str, float | None], selected: str) -> str:
    lines = [f"  {'accountant':<10}  {'epsilon':>10}  note"]
    for name in ACCOUNTANTS:
        value = epsilons[name]
        shown = "n/a" if value is None else "inf" if math.isinf(value) else f"{value:.4f}"
        mark = "  <- selected" if name == selected else ""
        lines.append(f"  {name:<10}  {shown:>10}  {ACCOUNTANT_LABELS[name]}{mark}")
    return "\n".join(lines)


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"  note: {note}")


def _print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, allow_nan=False, sort_keys=True))
