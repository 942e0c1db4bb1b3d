"""GLUE classification: SST-2 (sentiment of a sentence) and QNLI (does a sentence answer a question).

Files: GLUE TSV (header line, tab-separated: SST-2 ``sentence  label``; QNLI ``index  question  sentence
label``) or JSON (an object or list of records, or JSON Lines) with fields ``sentence``/``text_a`` (SST-2),
``question``/``text_a`` and ``sentence``/``text_b`` (QNLI), and ``label``. The format is told by content.
Labels may be the label name or its index.

Shipped: SST-2 train (67,349) and GLUE dev (872); QNLI ``train`` (8,999) and ``validation`` (1,000): the
LM-BFF "glue_pretrain" subsets of the GLUE train set, and ``dev``: the GLUE dev set (5,463), the set papers
report. The three QNLI files are disjoint.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from privtune.tasks.base import ClassificationExample, ClassificationTask
from privtune.tasks.io import BadRows, Columns, iter_json_records, iter_tsv


class _GlueTask(ClassificationTask):
    """Shared reading: TSV or JSON rows -> fields named in ``columns`` -> examples with validated labels."""

    columns: ClassVar[Columns]

    def _parse(self, split: str, text: str, name: str, bad: BadRows) -> list[ClassificationExample]:
        stripped = text.lstrip()
        rows = (
            self._json_rows(text, name, bad)
            if stripped[:1] in ("{", "[")
            else iter_tsv(text, name, bad, self.columns)
        )
        examples = []
        for line, row in rows:
            example = self._example(row, line, bad)
            if example is not None:
                examples.append(example)
        return examples

    def _json_rows(self, text: str, name: str, bad: BadRows) -> Iterator[tuple[int, dict[str, Any]]]:
        for line, key, record in iter_json_records(text, name):
            if not isinstance(record, dict):
                bad.add(line, f"record {key!r} is not an object")
                continue
            row: dict[str, Any] = {}
            for field, names in self.columns.items():
                column = next((c for c in names if c in record), None)
                if column is None:
                    bad.add(line, f"record {key!r} has no field {' or '.join(repr(c) for c in names)}")
                    break
                row[field] = record[column]
            else:
                yield line, row

    def _label(self, value: Any) -> int | None:
        """The label index of a label name or index (string or number); None if it is neither."""
        text = str(value).strip()
        if text in self.label_names:
            return self.label_names.index(text)
        if text.isdigit() and int(text) < self.num_labels:
            return int(text)
        return None

    def _example(self, row: dict[str, Any], line: int, bad: BadRows) -> ClassificationExample | None:
        label = self._label(row["label"])
        if label is None:
            allowed = ", ".join([*self.label_names, *map(str, range(self.num_labels))])
            bad.add(line, f"label {row['label']!r} is not one of {allowed}")
            return None
        texts = {}
        for field in self.columns:
            if field == "label":
                continue
            value = row[field]
            if not isinstance(value, str) or not value.strip():
                bad.add(line, f"empty or non-text {field}")
                return None
            texts[field] = value.strip()
        return self._make(texts, label)

    @abstractmethod
    def _make(self, texts: dict[str, str], label: int) -> ClassificationExample:
        """The example from the row's validated texts and label."""


class SST2Task(_GlueTask):
    """SST-2 sentiment. Infilling (the paper's ``<sentence> It was [MASK] .``): "<sentence> It was" is followed
    by " terrible" (label 0, negative) or " great" (label 1, positive)."""

    name: ClassVar[str] = "sst2"
    splits: ClassVar[tuple[str, ...]] = ("train", "dev")
    eval_split: ClassVar[str] = "dev"
    files: ClassVar[dict[str, str]] = {"train": "sst2/train.tsv.xz", "dev": "sst2/dev.tsv.xz"}
    columns: ClassVar[Columns] = {"sentence": ("sentence", "text_a", "text"), "label": ("label",)}
    label_names: ClassVar[tuple[str, ...]] = ("negative", "positive")
    label_words: ClassVar[tuple[str, ...]] = (" terrible", " great")
    label_prompts: ClassVar[tuple[str, ...] | None] = ("It was terrible.", "It was great.")
    description: ClassVar[str] = "GLUE SST-2: sentence sentiment, 2 classes (accuracy)"

    def _make(self, texts: dict[str, str], label: int) -> ClassificationExample:
        return ClassificationExample(text=texts["sentence"], label=label)

    def template(self, example: ClassificationExample) -> str:
        return f"{example.text} It was"


class QNLITask(_GlueTask):
    """QNLI. Infilling (the paper's ``<question> ? [MASK] , <sentence>`` with the label word moved last):
    "Question: <question>\\nSentence: <sentence>\\nDoes the sentence answer the question?" is followed by
    " Yes" (label 0, entailment) or " No" (label 1, not_entailment)."""

    name: ClassVar[str] = "qnli"
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "dev")
    eval_split: ClassVar[str] = "dev"
    files: ClassVar[dict[str, str]] = {
        "train": "qnli/glue_pretrain_train.json.xz",
        "validation": "qnli/glue_pretrain_dev.json.xz",
        "dev": "qnli/dev.tsv.xz",
    }
    columns: ClassVar[Columns] = {
        "question": ("question", "text_a"),
        "sentence": ("sentence", "text_b"),
        "label": ("label",),
    }
    label_names: ClassVar[tuple[str, ...]] = ("entailment", "not_entailment")
    label_words: ClassVar[tuple[str, ...]] = (" Yes", " No")
    description: ClassVar[str] = "GLUE QNLI: does the sentence answer the question, 2 classes (accuracy)"

    def _make(self, texts: dict[str, str], label: int) -> ClassificationExample:
        return ClassificationExample(text=texts["question"], text_pair=texts["sentence"], label=label)

    def template(self, example: ClassificationExample) -> str:
        return (
            f"Question: {example.text}\nSentence: {example.text_pair}\nDoes the sentence answer the question?"
        )
