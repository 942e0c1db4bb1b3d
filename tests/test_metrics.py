"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from privtune import metrics


def test_bleu_by_hand():
    # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3 and equal lengths (no brevity penalty): BLEU = (1/12)^(1/4).
    score = metrics.bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])
    assert score == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-9)
    assert metrics.bleu(["the cat sat on the mat"], [["a dog", "the cat sat on the mat"]]) == pytest.approx(
        100
    )


def test_bleu_with_varying_numbers_of_references():
    hyps = ["the cat sat on the mat", "a dog ran in the park"]
    uneven = metrics.bleu(hyps, [["the cat sat on a mat", "a cat is on the mat"], ["a dog ran in a park"]])
    # Repeating a reference changes nothing in BLEU, so padding the second list must give the same score.
    even = metrics.bleu(hyps, [["the cat sat on a mat", "a cat is on the mat"], ["a dog ran in a park"] * 2])
    assert uneven == pytest.approx(even) and 0 < uneven < 100


def test_rouge_l_by_hand():
    # LCS("the cat sat", "the cat was sat") = 3 tokens: P = 1, R = 3/4, F = 6/7.
    assert metrics.rouge_l(["the cat sat"], [["the cat was sat"]]) == pytest.approx(100 * 6 / 7)
    # Best reference per hypothesis, then the mean: (6/7 + 1) / 2.
    both = metrics.rouge_l(["the cat sat", "a dog"], [["the cat was sat", "nothing"], ["x y", "a dog"]])
    assert both == pytest.approx(100 * (6 / 7 + 1) / 2)


def test_nist_orders_hypotheses():
    refs = [["the cat sat on the mat today"]]
    perfect = metrics.nist(["the cat sat on the mat today"], refs)
    partial = metrics.nist(["the cat sat"], refs)
    assert perfect > partial > 0
    assert metrics.nist(["zebra"], refs) == 0


def test_token_f1_parlai_normalisation():
    assert metrics.normalize_answer("The Cat, an  owl & A dog!") == "cat owl dog"
    # "The cat sat." -> {cat, sat}; "a cat sat down" -> {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8.
    assert metrics.pair_token_f1("The cat sat.", "a cat sat down") == pytest.approx(0.8)
    assert metrics.pair_token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset counts
    assert metrics.pair_token_f1("", "cat") == 0 and metrics.pair_token_f1("dog", "cat") == 0
    # Mean over hypotheses of the best reference, in percent: (0.8 + 1) / 2.
    assert metrics.token_f1(["The cat sat.", "hi"], [["a cat sat down"], ["bye", "hi !"]]) == pytest.approx(
        90
    )


def test_perplexity_and_accuracy():
    assert metrics.perplexity(math.log(10)) == pytest.approx(10)
    assert metrics.perplexity_from_sums(3 * math.log(5), 3) == pytest.approx(5)
    assert metrics.perplexity(1e4) == math.inf
    with pytest.raises(ValueError):
        metrics.perplexity_from_sums(1.0, 0)
    assert metrics.accuracy([1, 0, 1], [1, 1, 1]) == pytest.approx(200 / 3)


def test_generation_metrics_and_bad_input():
    report = metrics.generation_metrics(["the cat sat on the mat"], [["the cat sat on the mat"]])
    assert set(report) == {"bleu", "nist", "rouge_l"} and report["rouge_l"] == pytest.approx(100)
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        metrics.bleu(["a", "b"], [["a"]])
    with pytest.raises(TypeError, match="one list of reference strings"):
        metrics.rouge_l(["a"], ["a"])
    with pytest.raises(ValueError, match="no reference"):
        metrics.token_f1(["a"], [[]])
    with pytest.raises(ValueError):
        metrics.accuracy([], [])
