"""The training job end to end on tiny random models with the real tokenizers: run folder, privacy report,
exact resumption after an interruption, every task kind, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers

from privtune.cli import main
from privtune.errors import AccountingError, DataError, PrivtuneError
from privtune.models import load_tokenizer
from privtune.runs import load_checkpoint
from privtune.tasks.io import BadRowsWarning
from privtune.train import TrainConfig, evaluate_run, train


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=256, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _config(tmp_path, model, **overrides):
    base = dict(task="sst2", model=model, epsilon=8.0, train_limit=64, eval_limit=16, epochs=1.0, batch_size=16,
                micro_batch_size=8, max_length=32, checkpoint_every=2, output_dir=str(tmp_path / "run"),
                secret_seeds=False)
    base.update(overrides)
    return TrainConfig(**base)


def test_private_classification_run_folder(tmp_path, tiny_bert_dir):
    summary = train(_config(tmp_path, tiny_bert_dir), progress=False, log=lambda _: None)
    run = tmp_path / "run"
    for name in ("config.json", "plan.json", "metrics.json", "privacy.json", "history.json", "report.md",
                 "plots/training.png", "plots/metrics.png", "checkpoint.pt"):
        assert (run / name).exists(), name
    privacy = json.loads((run / "privacy.json").read_text())
    assert privacy["private"] and privacy["sampling"] == "poisson"
    assert set(privacy["epsilon"]) == {"rdp", "pld", "gdp"}
    assert privacy["spent"]["steps"] == privacy["steps"] == summary["steps"]
    assert privacy["spent"]["epsilon"]["rdp"] <= 8.0 + 1e-6
    assert 0 <= summary["after"]["accuracy"] <= 100
    assert "epsilon spent" in (run / "report.md").read_text()


def test_interrupted_run_resumes_exactly(tmp_path, tiny_bert_dir, monkeypatch):
    config = _config(tmp_path, tiny_bert_dir, train_limit=96, epochs=2.0, eval_before=False)
    straight = dataclasses.replace(config, output_dir=str(tmp_path / "straight"))
    train(straight, progress=False, log=lambda _: None)

    from privtune import engine as engine_module

    original = engine_module.PrivacyEngine.step
    calls = {"n": 0}

    def crash_on_fifth(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(engine_module.PrivacyEngine, "step", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False, log=lambda _: None)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 4
    monkeypatch.setattr(engine_module.PrivacyEngine, "step", original)
    messages = []
    train(config, progress=False, log=messages.append)
    assert any("resuming" in m and "step 4" in m for m in messages)

    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert a["step"] == b["step"]
    for name, value in a["trainable"].items():
        assert torch.equal(value, b["trainable"][name]), name
    assert json.loads((tmp_path / "run" / "privacy.json").read_text())["spent"]["steps"] == a["step"]


def test_resume_refuses_a_changed_configuration(tmp_path, tiny_bert_dir, monkeypatch):
    config = _config(tmp_path, tiny_bert_dir, eval_before=False)
    from privtune import engine as engine_module

    def crash(self):
        raise KeyboardInterrupt

    (tmp_path / "run").mkdir()
    monkeypatch.setattr(engine_module.PrivacyEngine, "step", crash)
    with pytest.raises(KeyboardInterrupt):
        train(dataclasses.replace(config, checkpoint_every=1), progress=False, log=lambda _: None)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")  # pretend a checkpoint exists
    with pytest.raises(PrivtuneError, match="different configuration"):
        train(dataclasses.replace(config, checkpoint_every=1, epsilon=3.0), progress=False, log=lambda _: None)


def test_steps_instead_of_epochs(tmp_path, tiny_bert_dir):
    """--steps T: T noisy steps, each Poisson-sampled from the whole set at q = B/N; noise calibrated for T."""
    summary = train(_config(tmp_path, tiny_bert_dir, epochs=None, steps=3, eval_before=False), progress=False,
                    log=lambda _: None)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert summary["steps"] == plan["steps"] == 3 and plan["sample_rate"] == 16 / 64 and plan["epochs"] is None
    privacy = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert privacy["spent"]["steps"] == 3 and privacy["spent"]["epsilon"]["rdp"] <= 8.0 + 1e-6
    summary = train(_config(tmp_path, tiny_bert_dir, epochs=None, steps=2, non_private=True, epsilon=None,
                            eval_before=False, output_dir=str(tmp_path / "np")), progress=False, log=lambda _: None)
    assert summary["steps"] == 2
    with pytest.raises(AccountingError, match="exactly one of epochs or steps"):
        train(_config(tmp_path, tiny_bert_dir, steps=2, output_dir=str(tmp_path / "both")), progress=False,
              log=lambda _: None)


def test_cli_refuses_epochs_with_steps(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--task", "sst2", "--model", "minilm-l6", "--epsilon", "3", "--epochs", "1", "--steps", "5"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["e2e", "dialog"])
def test_generation_tasks(tmp_path, tiny_llama_dir, task):
    summary = train(_config(tmp_path, tiny_llama_dir, task=task, eval_limit=3, max_new_tokens=4, max_length=96),
                    progress=False, log=lambda _: None)
    expected = {"perplexity", "f1"} if task == "dialog" else {"perplexity", "bleu", "rouge_l"}
    assert set(summary["after"]) == expected
    samples = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 3 and "generated" in json.loads(samples[0])


def test_evaluate_a_finished_run_again(tmp_path, tiny_llama_dir, tiny_bert_dir):
    """privtune evaluate rebuilds the trained model: on the run's own data it reproduces the run's metrics."""
    summary = train(_config(tmp_path, tiny_llama_dir, task="e2e", method="lora", eval_limit=3, max_new_tokens=4,
                            max_length=96, eval_before=False), progress=False, log=lambda _: None)
    run = tmp_path / "run"
    again = evaluate_run(run, progress=False)
    assert again["eval_examples"] == 3 and again["metrics"] == pytest.approx(summary["after"], rel=1e-6)
    assert json.loads((run / "evaluations" / "eval.json").read_text())["metrics"] == again["metrics"]
    more = evaluate_run(run, eval_limit=5, name="five", progress=False)
    assert more["eval_examples"] == 5 and len((run / "evaluations" / "five.samples.jsonl").read_text().splitlines()) == 5
    classifier = train(_config(tmp_path, tiny_bert_dir, eval_before=False, output_dir=str(tmp_path / "cls")),
                       progress=False, log=lambda _: None)
    assert evaluate_run(tmp_path / "cls", progress=False)["metrics"] == pytest.approx(classifier["after"])
    bad = tmp_path / "bad.csv"
    bad.write_text("mr,ref\nname[X],\nname[Y],Y is here.\n")
    with pytest.raises(DataError, match="line 2"):
        evaluate_run(run, eval_file=str(bad), progress=False)
    with pytest.warns(BadRowsWarning, match="skipped 1 malformed rows"):
        assert evaluate_run(run, eval_file=str(bad), on_bad_rows="skip", progress=False)["eval_examples"] == 1
    with pytest.raises(PrivtuneError, match="not a finished run folder"):
        evaluate_run(tmp_path / "nowhere", progress=False)
    with pytest.raises(PrivtuneError, match="plain file name"):
        evaluate_run(run, name="../escape", progress=False)


def test_infilling_and_lora_and_non_private(tmp_path, tiny_llama_dir):
    summary = train(_config(tmp_path, tiny_llama_dir, method="lora", non_private=True, epsilon=None),
                    progress=False, log=lambda _: None)
    assert summary["epsilon"] is None and summary["trainable_parameters"] < summary["total_parameters"]
    privacy = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert privacy["private"] is False
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["classifier_mode"] == "infilling"


def test_secret_seeds_make_noise_and_batches_unpredictable(tmp_path, tiny_bert_dir):
    """Two runs with the same public config but secret seeds draw different batches and noise."""
    runs = []
    for name in ("a", "b"):
        config = _config(tmp_path, tiny_bert_dir, secret_seeds=True, eval_before=False, output_dir=str(tmp_path / name))
        train(config, progress=False, log=lambda _: None)
        runs.append(load_checkpoint(tmp_path / name / "checkpoint.pt")["trainable"])
        assert json.loads((tmp_path / name / "plan.json").read_text())["seed"] != 0
    assert any(not torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_bad_inputs(tmp_path, tiny_bert_dir):
    with pytest.raises(DataError, match="fewer than one logical batch"):
        train(_config(tmp_path, tiny_bert_dir, batch_size=128), progress=False, log=lambda _: None)
    with pytest.raises(AccountingError):
        train(_config(tmp_path, tiny_bert_dir, epsilon=0.0, output_dir=str(tmp_path / "r2")), progress=False,
              log=lambda _: None)
    with pytest.raises(PrivtuneError, match="unknown model"):
        train(_config(tmp_path, str(tmp_path / "nowhere"), output_dir=str(tmp_path / "r3")), progress=False,
              log=lambda _: None)
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\na fine film\t1\nno label here\nawful\tx\n")
    with pytest.raises(DataError, match="line 3"):
        train(_config(tmp_path, tiny_bert_dir, train_file=str(bad), output_dir=str(tmp_path / "r4")),
              progress=False, log=lambda _: None)


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    code = main(["train", "--task", "sst2", "--model", str(tmp_path / "missing"), "--epsilon", "3",
                 "--output-dir", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("privtune train: error:") and "Traceback" not in err


def test_mean_pooling_head_for_sentence_encoders(tmp_path, tiny_bert_dir):
    """A sentence-transformers checkpoint (1_Pooling/config.json with mean pooling) classifies the masked mean of
    its token states with a zero-initialised head; padding does not change an example's pooled features."""
    import shutil

    from privtune.models import load_model

    path = tmp_path / "st"
    shutil.copytree(tiny_bert_dir, path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    model, tokenizer = load_model(str(path), "classification", num_labels=2)  # no label prompts: a zero head
    assert float(model.classifier.weight.detach().abs().sum()) == 0.0
    model.eval()
    short = tokenizer(["a fine film"], return_tensors="pt")
    padded = tokenizer(["a fine film", "a much longer sentence with many more words"], padding=True,
                       return_tensors="pt")
    with torch.no_grad():
        model.classifier.weight.normal_()
        alone = model(**short).logits[0]
        batched = model(**padded).logits[0]
    torch.testing.assert_close(alone, batched, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_sentence_encoder_dir(tmp_path_factory, tiny_bert_dir):
    import shutil

    path = tmp_path_factory.mktemp("tiny-st") / "model"
    shutil.copytree(tiny_bert_dir, path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return str(path)


def test_prompt_head_is_the_zero_shot_classifier_of_the_label_prompts(tiny_sentence_encoder_dir):
    """head_init="prompt": logit_k(x) = s d_k . x, d_k = u_k - mean_j u_j, u_k = e_k / |e_k|, s = 1 / mean_k d_k . e_k,
    where e_k is the pooled embedding of label k's prompt: each prompt is classified as its own label, one unit
    above the mean logit, and any sentence's arg-max is that of the cosine similarity to the prompts."""
    from privtune.models import load_model

    prompts = ("It was terrible.", "It was fine.", "It was great.")
    model, tokenizer = load_model(tiny_sentence_encoder_dir, "classification", num_labels=3, head_init="prompt",
                                  label_prompts=prompts)
    model.eval()
    with torch.no_grad():
        encoded = tokenizer(list(prompts), padding=True, return_tensors="pt")
        logits = model(**encoded).logits
        pooled = model.bert(**encoded).pooler_output
    assert logits.argmax(1).tolist() == [0, 1, 2]
    torch.testing.assert_close((logits.diagonal() - logits.mean(1)).mean(), torch.tensor(1.0))
    units = torch.nn.functional.normalize(pooled, dim=1)
    directions = units - units.mean(0)
    expected = pooled @ directions.T / (directions * pooled).sum(1).mean()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        other = tokenizer(["a fine film", "what a waste of time"], padding=True, return_tensors="pt")
        sentences = model.bert(**other).pooler_output
        torch.testing.assert_close(model(**other).logits.argmax(1),
                                   (torch.nn.functional.normalize(sentences, dim=1) @ units.T).argmax(1))


def test_head_init_choices(tiny_sentence_encoder_dir, tiny_bert_dir):
    from privtune.models import load_model
    from privtune.tasks import get_task

    sst2, qnli = get_task("sst2"), get_task("qnli")
    assert sst2.label_prompts and qnli.label_prompts is None
    prompted, _ = load_model(tiny_sentence_encoder_dir, "classification", num_labels=2, head_init="prompt",
                             label_prompts=sst2.label_prompts)
    assert float(prompted.classifier.weight.detach().abs().sum()) > 0
    auto, _ = load_model(tiny_sentence_encoder_dir, "classification", num_labels=2, label_prompts=sst2.label_prompts)
    assert float(auto.classifier.weight.detach().abs().sum()) == 0.0  # auto: zero with mean pooling
    random_head, _ = load_model(tiny_bert_dir, "classification", num_labels=2)  # [CLS] pooler: random head
    assert float(random_head.classifier.weight.detach().abs().sum()) > 0
    with pytest.raises(PrivtuneError, match="label prompt"):
        load_model(tiny_sentence_encoder_dir, "classification", num_labels=2, head_init="prompt")
    with pytest.raises(PrivtuneError, match="2 label prompts for a head with 3 labels"):
        load_model(tiny_sentence_encoder_dir, "classification", num_labels=3, head_init="prompt",
                   label_prompts=sst2.label_prompts)


def test_recipe_defaults_give_a_classification_head_its_own_rate():
    from privtune.train import recipe_defaults

    full = recipe_defaults(TrainConfig(task="sst2", method="full"), model_is_encoder=True)
    assert (full.learning_rate, full.head_learning_rate, full.classifier_mode) == (5e-5, 3e-2, "head")
    lora = recipe_defaults(TrainConfig(task="sst2", method="lora"), model_is_encoder=True)
    assert (lora.learning_rate, lora.head_learning_rate) == (5e-3, 3e-2)
    plain = recipe_defaults(TrainConfig(task="sst2", method="full", non_private=True), model_is_encoder=True)
    assert (plain.learning_rate, plain.head_learning_rate) == (1e-4, 1e-2)
    given = recipe_defaults(TrainConfig(task="sst2", method="full", learning_rate=2e-4), model_is_encoder=True)
    assert given.learning_rate == 2e-4
    infilling = recipe_defaults(TrainConfig(task="sst2", method="full"), model_is_encoder=False)
    assert infilling.classifier_mode == "infilling" and infilling.head_learning_rate is None
    assert infilling.learning_rate == 5e-4
