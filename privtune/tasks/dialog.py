"""Persona-grounded dialogue: ConvAI2 (Persona-Chat), next-utterance generation from persona and history.

File: ParlAI text format. Each line is ``<number> <text>``; the number restarts at 1 with each dialogue.
``your persona: ...`` lines come first, then turns ``<partner's utterance><TAB><our response>`` (further
tab-separated fields, such as candidates, are ignored; ``partner's persona:`` lines too).

Shipped: the ConvAI2 validation set (``valid_self_original_no_cands.txt``: 1,000 dialogues, 7,801 turns).
It is split by dialogue into ``train`` and ``test`` (about 80/20) by a hash of each dialogue's content, so
the split does not depend on the file's order or on other dialogues being skipped, and no dialogue is in
both. One example per turn: persona + all earlier utterances + the partner's utterance -> our response.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import ClassVar

from privtune.errors import PrivtuneError
from privtune.tasks.base import GenerationExample, GenerationTask
from privtune.tasks.io import BadRows, lines

_LINE = re.compile(r"(\d+) (.*)\Z", re.DOTALL)
_YOUR_PERSONA = "your persona:"
_PARTNER_PERSONA = "partner's persona:"
# ParlAI's marker for "the partner said nothing" (the bot speaks first); left out of the history.
SILENCE = "__SILENCE__"


@dataclass
class Dialogue:
    """One parsed dialogue: ``persona`` sentences, ``turns`` as (partner, response) pairs, its first line."""

    line: int
    persona: list[str] = field(default_factory=list)
    turns: list[tuple[str, str]] = field(default_factory=list)
    broken: bool = False

    def split_key(self) -> int:
        """A stable number from the dialogue's content (persona and first turn) that assigns its split."""
        text = "\n".join([*self.persona, *(self.turns[0] if self.turns else ())])
        return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16)


def parse_parlai(text: str, bad: BadRows) -> list[Dialogue]:
    """Dialogues of a ParlAI-format file; a malformed line goes to ``bad`` and marks its dialogue broken."""
    dialogues: list[Dialogue] = []
    current: Dialogue | None = None
    previous = 0
    for number, raw in enumerate(lines(text), start=1):
        if not raw.strip():
            continue
        match = _LINE.match(raw)
        if match is None:
            bad.add(number, "expected '<turn number> <text>'")
            if current is not None:
                current.broken = True
            continue
        turn, body = int(match[1]), match[2]
        if turn == 1:
            current = Dialogue(line=number)
            dialogues.append(current)
        elif current is None or turn != previous + 1:
            bad.add(number, f"turn number {turn} does not follow {previous} (a dialogue starts at 1)")
            if current is not None:
                current.broken = True
            previous = turn
            continue
        previous = turn
        if body.startswith(_YOUR_PERSONA):
            if current.turns:
                bad.add(number, "persona line after the dialogue's first turn")
                current.broken = True
            else:
                current.persona.append(body[len(_YOUR_PERSONA) :].strip())
            continue
        if body.startswith(_PARTNER_PERSONA):
            continue
        fields = body.split("\t")
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            bad.add(number, "expected '<partner utterance><TAB><response>'")
            current.broken = True
            continue
        current.turns.append((fields[0].strip(), fields[1].strip()))
    for dialogue in dialogues:
        if not dialogue.turns and not dialogue.broken:
            bad.add(dialogue.line, "dialogue has no turns")
            dialogue.broken = True
    return [d for d in dialogues if not d.broken]


class DialogTask(GenerationTask):
    """ConvAI2 next-utterance generation; report token F1 and perplexity on ``test``.

    Options: ``test_fraction`` (share of dialogues in ``test``, default 0.2); ``max_history`` (keep only the
    last this many utterances of the history, the partner's current one included; None keeps all).
    """

    name: ClassVar[str] = "dialog"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    eval_split: ClassVar[str] = "test"
    files: ClassVar[dict[str, str]] = {
        "train": "convai2/valid_self_original_no_cands.txt.xz",
        "test": "convai2/valid_self_original_no_cands.txt.xz",
    }
    separator: ClassVar[str] = "\nYou:"
    description: ClassVar[str] = (
        "ConvAI2 (Persona-Chat): persona + history -> next utterance (token F1, perplexity)"
    )
    _unit: ClassVar[str] = "lines"
    _skipped_note: ClassVar[str] = " (with the whole dialogue of each)"

    def __init__(self, test_fraction: float = 0.2, max_history: int | None = None) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise PrivtuneError(f"test_fraction must be strictly between 0 and 1; got {test_fraction!r}")
        if max_history is not None and (not isinstance(max_history, int) or max_history < 1):
            raise PrivtuneError(f"max_history must be a positive integer or None; got {max_history!r}")
        self.test_fraction = test_fraction
        self.max_history = max_history

    def split_of(self, dialogue: Dialogue) -> str:
        """ "test" for about ``test_fraction`` of dialogues, chosen by content hash; "train" otherwise."""
        return "test" if dialogue.split_key() % 10_000 < round(self.test_fraction * 10_000) else "train"

    def _parse(self, split: str, text: str, name: str, bad: BadRows) -> list[GenerationExample]:
        examples = []
        for dialogue in parse_parlai(text, bad):
            if self.split_of(dialogue) == split:
                examples.extend(self.examples_of(dialogue))
        return examples

    def examples_of(self, dialogue: Dialogue) -> list[GenerationExample]:
        """One example per turn: the source is the persona and the history up to the partner's utterance."""
        persona = "Your persona: " + " ".join(dialogue.persona) if dialogue.persona else ""
        history: list[str] = []
        examples = []
        for partner, response in dialogue.turns:
            if partner != SILENCE:
                history.append(f"Partner: {partner}")
            kept = history if self.max_history is None else history[-self.max_history :]
            source = "\n".join([persona, *kept] if persona else kept)
            group = f"dialogue at line {dialogue.line}"
            examples.append(
                GenerationExample(source=source, target=response, references=(response,), group=group)
            )
            history.append(f"You: {response}")
        return examples
