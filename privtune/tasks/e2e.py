"""E2E NLG (Novikova, Dusek & Rieser 2017): restaurant meaning representations to English descriptions.

Files: CSV with a header and columns ``mr`` (e.g. ``name[The Vaults], eatType[pub], near[Café Adriatic]``)
and ``ref`` (one human reference); several rows share an MR. Shipped: the official train (42,061 rows,
4,862 MRs), dev (4,672 rows, 547 MRs) and test-with-references (4,693 rows, 630 MRs) sets, CC BY-SA 4.0.
The train split has one example per row; dev and test have one example per MR with all its references.
"""

from __future__ import annotations

from typing import ClassVar

from privtune.tasks.base import GenerationExample, GenerationTask
from privtune.tasks.io import BadRows, iter_csv


class E2ETask(GenerationTask):
    """Table-to-text generation on E2E; report BLEU/ROUGE-L on ``test`` against all references of an MR."""

    name: ClassVar[str] = "e2e"
    splits: ClassVar[tuple[str, ...]] = ("train", "dev", "test")
    eval_split: ClassVar[str] = "test"
    grouped_splits: ClassVar[tuple[str, ...]] = ("dev", "test")
    files: ClassVar[dict[str, str]] = {
        "train": "e2e/trainset.csv.xz",
        "dev": "e2e/devset.csv.xz",
        "test": "e2e/testset_w_refs.csv.xz",
    }
    # The MR, then this, then the reference: plain words, which a pretrained LM continues sensibly.
    separator: ClassVar[str] = "\nDescription:"
    description: ClassVar[str] = "E2E NLG: restaurant meaning representation -> description (BLEU, ROUGE-L)"

    def _parse(self, split: str, text: str, name: str, bad: BadRows) -> list[GenerationExample]:
        examples: list[GenerationExample] = []
        for line, row in iter_csv(text, name, bad, {"mr": ("mr",), "ref": ("ref",)}):
            mr, ref = row["mr"].strip(), row["ref"].strip()
            if not mr or not ref:
                bad.add(line, f"empty {'mr' if not mr else 'ref'}")
                continue
            examples.append(GenerationExample(source=mr, target=ref, references=(ref,), group=mr))
        return examples
