"""Markdown reports with plots: one run (loss and epsilon over steps, the task metric) or several runs
compared (metric against epsilon)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from privtune.runs import read_json, write_text

PRIMARY_METRIC = {"sst2": "accuracy", "qnli": "accuracy", "e2e": "bleu", "dialog": "f1"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def write_run_report(run: str | Path) -> Path:
    """``run/report.md`` and ``run/plots/*.png`` from the run's JSON files."""
    run = Path(run)
    config = read_json(run / "config.json")
    summary = read_json(run / "metrics.json")
    history = read_json(run / "history.json")
    privacy = read_json(run / "privacy.json")
    plots = run / "plots"
    plots.mkdir(exist_ok=True)
    plt = _plt()

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(history["step"], history["loss"])
    axes[0].set(xlabel="step", ylabel="training loss (per example, mean)", title="training loss")
    if privacy.get("private"):
        axes[1].plot(history["step"], history["epsilon"])
        axes[1].set(xlabel="step", ylabel="epsilon (RDP)", title=f"epsilon spent (delta={privacy['delta']:.1e})")
    else:
        axes[1].text(0.5, 0.5, "non-private run", ha="center", va="center")
        axes[1].set_axis_off()
    fig.tight_layout()
    fig.savefig(plots / "training.png", dpi=110)
    plt.close(fig)

    before, after = summary.get("before") or {}, summary.get("after") or {}
    names = sorted(set(before) | set(after))
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [before.get(n, 0) for n in names], width=0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [after.get(n, 0) for n in names], width=0.4, label="after")
    ax.set_xticks(list(xs), names)
    ax.set_title("task metrics")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "metrics.png", dpi=110)
    plt.close(fig)

    lines = [f"# privtune run: {config['task']} / {config['model']} / {config['method']}", ""]
    lines += ["## Task metrics", "", _table([[n, before.get(n), after.get(n)] for n in names],
                                           ["metric", "before", "after"]), "", "![metrics](plots/metrics.png)", ""]
    lines += ["## Privacy", ""]
    if privacy.get("private"):
        spent = privacy.get("spent", {}).get("epsilon", {})
        rows = [[name, privacy["epsilon"].get(name), spent.get(name), privacy["accountants"].get(name, "")]
                for name in privacy["epsilon"]]
        lines += [_table(rows, ["accountant", "epsilon planned", "epsilon spent", "note"]), ""]
        lines += [
            f"delta = {privacy['delta']:.3g} ({privacy['delta_rule']}); noise multiplier sigma = "
            f"{privacy['noise_multiplier']:.4f}; sample rate q = {privacy['sample_rate']:.5f}; "
            f"steps = {privacy['steps']}; sigma_eff = sigma/q = {privacy['sigma_eff']:.1f}; "
            f"clipping {privacy['clipping']} at C = {privacy['max_grad_norm']}; sampling: {privacy['sampling']} "
            f"({privacy['neighbouring']} neighbours).",
            "",
            privacy["note"] + ".",
            "",
        ]
    else:
        lines += ["Non-private run: no differential-privacy guarantee.", ""]
    lines += ["## Training", "", "![training](plots/training.png)", "",
              f"{summary['train_examples']} training examples, {summary['steps']} steps, "
              f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters trained, "
              f"{_cell(summary.get('train_seconds'))} s.", ""]
    lines += ["## Configuration", "", "```json", _json(config), "```", ""]
    path = run / "report.md"
    write_text(path, "\n".join(lines))
    return path


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, default=str)


def compare_runs(runs: list[str | Path], output: str | Path) -> Path:
    """``output/comparison.md`` and ``output/metric_vs_epsilon.png``: each run's primary metric against the
    epsilon it spent (non-private runs drawn as a horizontal line)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in runs:
        summary = read_json(Path(run) / "metrics.json")
        metric = PRIMARY_METRIC.get(summary["task"], next(iter(summary["after"])))
        eps = (summary.get("epsilon") or {}).get("rdp") if summary.get("epsilon") else None
        rows.append({"run": str(run), "task": summary["task"], "model": summary["model"], "method": summary["method"],
                     "epsilon": eps, "metric": metric, "value": summary["after"][metric]})
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in sorted({(r["task"], r["model"], r["method"]) for r in rows}):
        group = [r for r in rows if (r["task"], r["model"], r["method"]) == key]
        private = sorted((r for r in group if r["epsilon"] is not None), key=lambda r: r["epsilon"])
        line = ax.plot([r["epsilon"] for r in private], [r["value"] for r in private], "o-", label="/".join(key))
        for r in group:
            if r["epsilon"] is None:
                ax.axhline(r["value"], linestyle="--", color=line[0].get_color())
    ax.set(xlabel="epsilon (RDP)", ylabel="metric", title="metric vs epsilon (dashed: non-private)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output / "metric_vs_epsilon.png", dpi=110)
    plt.close(fig)
    table = _table([[r["task"], r["model"], r["method"], r["epsilon"] if r["epsilon"] is not None else "non-private",
                     r["metric"], r["value"]] for r in rows],
                   ["task", "model", "method", "epsilon", "metric", "value"])
    path = output / "comparison.md"
    write_text(path, "# Runs compared\n\n" + table + "\n\n![metric vs epsilon](metric_vs_epsilon.png)\n")
    return path
