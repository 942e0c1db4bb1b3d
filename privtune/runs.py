"""A run folder: every file written atomically, checkpoints that resume a run exactly.

Layout::

    RUN/config.json       the resolved configuration
    RUN/checkpoint.pt     trainable parameters, optimizer, scheduler, ledger, RNG states, step, history
    RUN/history.json      training loss and epsilon per logged step
    RUN/privacy.json      the privacy report (epsilon under every accountant, sigma, q, steps, sampling)
    RUN/metrics.json      task metrics before and after training
    RUN/samples.jsonl     generated samples (generation tasks)
    RUN/report.md         the Markdown report, with plots in RUN/plots/

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the target: an
interrupted run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _atomic(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    _atomic(Path(path), lambda handle: json.dump(data, handle, indent=2, sort_keys=False, default=str))


def write_text(path: str | os.PathLike[str], text: str) -> None:
    _atomic(Path(path), lambda handle: handle.write(text))


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    _atomic(Path(path), lambda handle: torch.save(state, handle), mode="wb")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path) as handle:
        return json.load(handle)
