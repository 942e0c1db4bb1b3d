"""What every task has: a name, a kind, named splits, and ``load_split`` returning example dataclasses.

A task reads its split from the copy shipped in ``privtune/data/`` or from a user file in the same format.
Generation tasks (E2E, dialogue) give :class:`GenerationExample`; classification tasks (SST-2, QNLI) give
:class:`ClassificationExample`. Turning examples into tensors lives in :mod:`privtune.tasks.collate`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from privtune.errors import DataError, PrivtuneError
from privtune.tasks.collate import encode_causal_lm, encode_classification, encode_infilling, encode_prompts
from privtune.tasks.io import BadRows, check_policy, read_text, shipped_file

TaskKind = Literal["generation", "classification"]
ClassifierMode = Literal["head", "infilling"]


class UnknownTaskError(PrivtuneError):
    """A task name that is not registered, or a split the task does not have."""


@dataclass(frozen=True)
class GenerationExample:
    """A text-to-text example for a causal LM.

    ``source``: the input (an E2E meaning representation; persona and dialogue history).
    ``target``: the text to produce; the training loss is on it alone.
    ``references``: every acceptable target for this source (E2E evaluation splits group all references of
    one MR in one example; otherwise ``(target,)``). ``target`` is always ``references[0]``.
    ``group``: what the example belongs to (the MR; the dialogue id). Examples that share a group are not
    independent: differential privacy at the example level does not cover the group as a whole.
    """

    source: str
    target: str
    references: tuple[str, ...]
    group: str = ""


@dataclass(frozen=True)
class ClassificationExample:
    """A labelled text (SST-2: a sentence) or text pair (QNLI: ``text`` = question, ``text_pair`` = sentence).

    ``label`` indexes the task's ``label_names`` and ``label_words``.
    """

    text: str
    label: int
    text_pair: str | None = None


Example = GenerationExample | ClassificationExample


class Task(ABC):
    """A dataset with its splits. Subclasses set the class attributes and implement ``_parse``.

    Attributes: ``name`` (registry name), ``kind`` ("generation" | "classification"), ``splits`` (all split
    names), ``train_split`` and ``eval_split`` (the splits a recipe trains on and reports), ``files``
    (split -> shipped file under privtune/data/), ``description``.
    """

    name: ClassVar[str]
    kind: ClassVar[TaskKind]
    splits: ClassVar[tuple[str, ...]]
    train_split: ClassVar[str] = "train"
    eval_split: ClassVar[str]
    files: ClassVar[dict[str, str]]
    description: ClassVar[str] = ""
    # How bad-row messages name a row, and what skipping one drops besides it.
    _unit: ClassVar[str] = "rows"
    _skipped_note: ClassVar[str] = ""

    def load_split(
        self,
        split: str,
        limit: int | None = None,
        path: str | Path | None = None,
        on_bad_rows: str = "error",
    ) -> list[Any]:
        """The examples of ``split``, in file order.

        ``path``: read this user file (same format as the shipped one; may be xz/gzip/bzip2-compressed)
        instead of the copy shipped with privtune. ``limit``: keep only the first ``limit`` examples.
        ``on_bad_rows``: "error" refuses a file with malformed rows (DataError listing the first bad lines);
        "skip" drops them and warns (:class:`~privtune.tasks.io.BadRowsWarning`) with counts.
        Raises DataError when no example is left, UnknownTaskError for an unknown split.
        """
        self._check_arguments(split, limit, on_bad_rows)
        source = self._source(split, path)
        name = str(source)
        bad = BadRows(name, on_bad_rows)
        examples = self._parse(split, read_text(source), name, bad)
        bad.finish(len(examples), self._unit, self._skipped_note)
        if not examples:
            why = f"after skipping {len(bad)} malformed {self._unit}" if len(bad) else "in the file"
            raise DataError(
                f"{name}: empty dataset: no examples for split {split!r} of task {self.name!r} {why}"
            )
        return examples[:limit] if limit is not None else examples

    @abstractmethod
    def _parse(self, split: str, text: str, name: str, bad: BadRows) -> list[Any]:
        """Examples of ``split`` from the file's text; malformed rows go to ``bad`` with their line."""

    def _check_arguments(self, split: str, limit: int | None, on_bad_rows: str) -> None:
        if split not in self.splits:
            raise UnknownTaskError(
                f"task {self.name!r} has no split {split!r}; its splits: {', '.join(self.splits)}"
            )
        check_policy(on_bad_rows)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise PrivtuneError(f"limit must be a positive integer or None; got {limit!r}")

    def _source(self, split: str, path: str | Path | None) -> Path | Traversable:
        if path is not None:
            return Path(path).expanduser()
        return shipped_file(self.files[split])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, splits={self.splits})"


class GenerationTask(Task):
    """A causal-LM task: ``prompt = source + separator``, ``completion = " " + target``, then the EOS token.

    ``grouped_splits`` are returned with all references of one source in one example (for BLEU/ROUGE).
    """

    kind: ClassVar[TaskKind] = "generation"
    separator: ClassVar[str]
    grouped_splits: ClassVar[tuple[str, ...]] = ()

    def prompt(self, example: GenerationExample) -> str:
        """The text the model is conditioned on (no loss on it); generation continues from here."""
        return example.source + self.separator

    def completion(self, example: GenerationExample) -> str:
        """The text the model learns to produce after the prompt (the EOS token is added as an id)."""
        return " " + example.target.strip()

    def load_split(
        self,
        split: str,
        limit: int | None = None,
        path: str | Path | None = None,
        on_bad_rows: str = "error",
    ) -> list[GenerationExample]:
        """As :meth:`Task.load_split`; splits in ``grouped_splits`` are grouped by source first, and then
        ``limit`` counts sources (E2E: MRs), not rows."""
        self._check_arguments(split, limit, on_bad_rows)
        if split not in self.grouped_splits:
            return super().load_split(split, limit, path, on_bad_rows)
        examples = group_references(super().load_split(split, None, path, on_bad_rows))
        return examples[:limit] if limit is not None else examples

    def collate(
        self, tokenizer: Any, examples: Sequence[GenerationExample], max_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """A training batch: ``input_ids``, ``attention_mask``, ``labels`` (-100 off the target), right-padded."""
        return encode_causal_lm(
            tokenizer, [self.prompt(e) for e in examples], [self.completion(e) for e in examples], max_length
        )

    def collate_prompts(
        self, tokenizer: Any, examples: Sequence[GenerationExample], max_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Prompts for ``model.generate``: ``input_ids``, ``attention_mask``, left-padded."""
        return encode_prompts(tokenizer, [self.prompt(e) for e in examples], max_length)


class ClassificationTask(Task):
    """A labelled-text task usable two ways (``mode``):

    - "head": an encoder with a classification head (``AutoModelForSequenceClassification``);
    - "infilling": a causal LM scores ``label_words`` as the next token after ``template(example)``
      (the paper's prompt with the ``[MASK]`` moved to the end so a left-to-right model can fill it).
    """

    kind: ClassVar[TaskKind] = "classification"
    label_names: ClassVar[tuple[str, ...]]
    label_words: ClassVar[tuple[str, ...]]
    # One sentence per label that a sentence encoder can embed ("It was great."): the head of an encoder
    # classifier may start as the zero-shot classifier these define (privtune.models.init_head_from_prompts).
    # None: the task has no such description (a sentence-pair task), and the head starts at zero.
    label_prompts: ClassVar[tuple[str, ...] | None] = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @abstractmethod
    def template(self, example: ClassificationExample) -> str:
        """The infilling prompt; the label word is the next token after it."""

    def collate(
        self,
        tokenizer: Any,
        examples: Sequence[ClassificationExample],
        max_length: int | None = None,
        mode: ClassifierMode = "head",
    ) -> dict[str, torch.Tensor]:
        """A batch for ``mode`` "head" (``input_ids``, ``attention_mask`` [, ``token_type_ids``], ``labels``) or
        "infilling" (adds ``score_positions`` and ``label_token_ids``; see :func:`~privtune.tasks.collate.encode_infilling`)."""
        if mode == "head":
            return encode_classification(tokenizer, examples, max_length)
        if mode == "infilling":
            return encode_infilling(
                tokenizer,
                [self.template(e) for e in examples],
                [e.label for e in examples],
                self.label_words,
                max_length,
            )
        raise PrivtuneError(f"classification mode must be 'head' or 'infilling'; got {mode!r}")


def group_references(examples: Sequence[GenerationExample]) -> list[GenerationExample]:
    """Merge examples with the same source into one whose ``references`` are all their targets.

    Order: sources by first appearance, references in file order. Sources need not be on consecutive rows.
    """
    grouped: dict[str, list[str]] = {}
    for example in examples:
        grouped.setdefault(example.source, []).extend(example.references)
    first = {}
    for example in examples:
        first.setdefault(example.source, example)
    return [replace(first[s], target=refs[0], references=tuple(refs)) for s, refs in grouped.items()]
