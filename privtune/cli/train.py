"""``privtune train``, ``privtune demo`` and ``privtune report``."""

from __future__ import annotations

import argparse
import dataclasses
import json

from privtune.methods import METHODS
from privtune.train import TrainConfig

TASKS = ("e2e", "sst2", "qnli", "dialog")

# The demo: LoRA on MiniLM (shipped in a PyPI package) with 4,000 SST-2 sentences (shipped in privtune/data),
# epsilon 8, a few minutes on 2 CPU cores. LoRA, because on this small model and data set DP-Adam full
# fine-tuning drowns in noise (benchmarks/utility.py: chance accuracy at epsilon 8 vs 77% for LoRA).
DEMO = TrainConfig(task="sst2", model="minilm-l6", method="lora", epsilon=8.0, train_limit=4000, eval_limit=872,
                   epochs=3.0, output_dir="runs/demo")


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="fine-tune a model with differential privacy",
                                  description="Fine-tune a pretrained model on a task with differential privacy "
                                  "(or --non-private), writing a run folder with metrics, privacy report, "
                                  "checkpoints, samples and a Markdown report. Re-running the same command "
                                  "on an interrupted run resumes it exactly.")
    train.add_argument("--task", required=True, choices=TASKS)
    train.add_argument("--model", required=True, help="smollm2-135m, minilm-l6, or a local Hugging Face directory")
    privacy = train.add_mutually_exclusive_group(required=True)
    privacy.add_argument("--epsilon", type=float, help="target epsilon of the whole run")
    privacy.add_argument("--non-private", action="store_true", help="train without privacy (a baseline)")
    train.add_argument("--delta", type=float, help="target delta (default 1/(2N))")
    train.add_argument("--method", choices=METHODS, default="full")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="passes over the training set (default: the recipe's)")
    length.add_argument("--steps", type=int,
                        help="noisy steps instead of epochs, each sampling from the whole training set at rate "
                             "q = B/N: for a large data set and a compute budget of steps x batch examples")
    train.add_argument("--batch-size", type=int, help="logical (expected) batch size")
    train.add_argument("--micro-batch-size", type=int)
    train.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float)
    train.add_argument("--head-lr", "--head-learning-rate", dest="head_learning_rate", type=float,
                       help="learning rate of a new classification head (default 3e-2 private, 1e-2 not)")
    train.add_argument("--head-init", choices=("auto", "zero", "prompt", "random"), default="auto",
                       help="how a new classification head starts: zero, the zero-shot classifier of the task's "
                            "label prompts (e.g. 'It was great.'), or random; auto: zero where the encoder "
                            "mean-pools, else random")
    train.add_argument("--warmup-steps", type=int)
    train.add_argument("--max-grad-norm", type=float, help="clipping threshold C")
    train.add_argument("--clipping", choices=("flat", "per_layer", "automatic"), default="flat")
    train.add_argument("--accountant", choices=("rdp", "pld"), default="rdp", help="calibrates the noise")
    train.add_argument("--classifier-mode", choices=("head", "infilling"))
    train.add_argument("--train-limit", type=int, help="use the first N training examples")
    train.add_argument("--eval-limit", type=int, help="evaluate on the first N examples (E2E: meaning representations)")
    train.add_argument("--train-file", help="a training file in the task's format instead of the shipped data")
    train.add_argument("--eval-file")
    train.add_argument("--on-bad-rows", choices=("error", "skip"), default="error")
    train.add_argument("--max-length", type=int)
    train.add_argument("--num-beams", type=int, default=1)
    train.add_argument("--max-new-tokens", type=int, default=48)
    train.add_argument("--lora-rank", type=int, default=8)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=20)
    train.add_argument("--output-dir", default="runs/latest")
    train.add_argument("--no-eval-before", dest="eval_before", action="store_false")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--json", action="store_true", help="print the final summary as JSON")
    train.set_defaults(func=_train)

    demo = subparsers.add_parser("demo", help="a small real private fine-tuning on the shipped default data")
    demo.add_argument("--output-dir", default=DEMO.output_dir)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_demo)

    evaluate = subparsers.add_parser(
        "evaluate", help="evaluate a finished run's model again, on other or more data",
        description="Rebuild a finished run's model from its run folder (config.json, checkpoint.pt) and compute "
        "the task's metrics on other data or more of it; writes RUN/evaluations/NAME.json and NAME.samples.jsonl. "
        "Evaluating on public test data spends no privacy budget.")
    evaluate.add_argument("run", help="a run folder written by privtune train")
    evaluate.add_argument("--eval-file", help="an evaluation file in the task's format (default: the run's own)")
    evaluate.add_argument("--eval-limit", type=int, help="the first N examples (default: the run's limit; with "
                          "--eval-file, the whole file)")
    evaluate.add_argument("--on-bad-rows", choices=("error", "skip"), help="default: the run's own setting")
    evaluate.add_argument("--num-beams", type=int)
    evaluate.add_argument("--max-new-tokens", type=int)
    evaluate.add_argument("--name", default="eval", help="file name of the result in RUN/evaluations/")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(func=_evaluate)

    report = subparsers.add_parser("report", help="compare finished runs: metric vs epsilon")
    report.add_argument("runs", nargs="+")
    report.add_argument("--output", default="runs/comparison")
    report.set_defaults(func=_report)


def _train(args: argparse.Namespace) -> int:
    from privtune.train import train

    config = TrainConfig.from_dict(vars(args))
    if config.non_private:
        config.epsilon = None
    summary = train(config, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary, default=str))
    print(f"run folder: {config.output_dir} (report.md, metrics.json, privacy.json)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from privtune.train import evaluate_run

    result = evaluate_run(args.run, eval_file=args.eval_file, eval_limit=args.eval_limit, num_beams=args.num_beams,
                          max_new_tokens=args.max_new_tokens, on_bad_rows=args.on_bad_rows, name=args.name,
                          progress=not args.quiet)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(f"{result['task']} on {result['eval_examples']} examples: "
              + ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items()))
    print(f"written: {args.run}/evaluations/{args.name}.json")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from privtune.train import train

    out = Path(args.output_dir)
    if (out / "metrics.json").exists():  # a finished demo: run it again from scratch
        shutil.rmtree(out)
    config = dataclasses.replace(DEMO, output_dir=str(out))
    summary = train(config, progress=not args.quiet)
    eps = summary["epsilon"] or {}
    before = (summary["before"] or {}).get("accuracy")
    after = summary["after"]["accuracy"]
    privacy = json.loads((out / "privacy.json").read_text())
    print()
    print(f"SST-2 dev accuracy: {before:.1f}% before -> {after:.1f}% after DP fine-tuning of MiniLM-L6 "
          f"(LoRA) on {summary['train_examples']} sentences")
    print(f"noise multiplier sigma = {privacy['noise_multiplier']:.4f}, q = {privacy['sample_rate']:.4f}, "
          f"{privacy['steps']} steps, C = {privacy['max_grad_norm']}")
    print("epsilon spent at delta={:.2e}: ".format(privacy["delta"])
          + ", ".join(f"{k}={v:.3f}" for k, v in eps.items() if v is not None))
    print(f"report: {out / 'report.md'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from privtune.report import compare_runs

    print(compare_runs(args.runs, args.output))
    return 0
