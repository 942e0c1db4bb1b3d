"""The fine-tuning tasks: data loading and batching for E2E, SST-2, QNLI and ConvAI2 dialogue.

``get_task(name)`` returns a :class:`~privtune.tasks.base.Task`; ``task.load_split(task.train_split)`` gives
example dataclasses and ``task.collate(tokenizer, examples)`` a batch of tensors. Data ships inside privtune
(privtune/data/, provenance and licenses in privtune/data/NOTICE.md); ``path=`` reads a user file instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from privtune.tasks.base import (
    ClassificationExample,
    ClassificationTask,
    GenerationExample,
    GenerationTask,
    Task,
    UnknownTaskError,
    group_references,
)
from privtune.tasks.dialog import DialogTask
from privtune.tasks.e2e import E2ETask
from privtune.tasks.glue import QNLITask, SST2Task
from privtune.tasks.io import BadRowsWarning

TASKS: Mapping[str, type[Task]] = MappingProxyType(
    {"e2e": E2ETask, "sst2": SST2Task, "qnli": QNLITask, "dialog": DialogTask}
)


def task_names() -> tuple[str, ...]:
    """The registered task names, in the order the CLI lists them."""
    return tuple(TASKS)


def get_task(name: str, **options: Any) -> Task:
    """A new task object by registry name; ``options`` go to its constructor (e.g. ``max_history`` for
    "dialog"). Raises UnknownTaskError (a PrivtuneError) listing the known names."""
    try:
        cls = TASKS[name]
    except (KeyError, TypeError):
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise UnknownTaskError(f"task {name!r} does not take options {sorted(options)} ({exc})") from None


__all__ = [
    "TASKS",
    "BadRowsWarning",
    "ClassificationExample",
    "ClassificationTask",
    "DialogTask",
    "E2ETask",
    "GenerationExample",
    "GenerationTask",
    "QNLITask",
    "SST2Task",
    "Task",
    "UnknownTaskError",
    "get_task",
    "group_references",
    "task_names",
]
