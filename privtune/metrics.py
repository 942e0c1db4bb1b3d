"""Task metrics: BLEU, NIST, ROUGE-L (E2E), token F1 and perplexity (dialogue), accuracy (classification).

Scores in percent (0-100) except NIST (its own scale) and perplexity. ``references`` are given per
hypothesis (a list of strings; their number may vary). All computed offline.

Not provided: METEOR (nltk's needs the WordNet corpus, a download; the official one needs Java) and CIDEr
(its maintained implementation, pycocoevalcap, is not a dependency). NIST uses nltk's implementation
(nltk is installed with rouge-score) on sacrebleu's 13a tokenization, as the E2E script's mteval does.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = re.compile(r"[!\"#$%&()*+,\-./:;<=>?@\[\]\\^`{|}~_']")


def _check(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    if isinstance(references[0], str):
        raise TypeError("references must be one list of reference strings per hypothesis")
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"hypothesis {i} has no reference")


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], lowercase: bool = False) -> float:
    """Corpus BLEU-4 in percent (sacrebleu, 13a tokenization, exponential smoothing), multi-reference."""
    import sacrebleu

    _check(hypotheses, references)
    streams = _reference_streams(references)
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams, lowercase=lowercase).score)


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: stream k holds every hypothesis's k-th reference (None where it has fewer)."""
    width = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 5) -> float:
    """Corpus NIST up to ``n``-grams (nltk's implementation), on 13a-tokenized text, multi-reference.

    An n-gram order that no hypothesis is long enough to have contributes 0 (nltk would divide by zero).
    nltk scores each segment against its best reference, so values are close to, not equal to, mteval's.
    """
    from nltk.translate.nist_score import corpus_nist
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    _check(hypotheses, references)
    tokenize = Tokenizer13a()
    hyps = [tokenize(h).split() for h in hypotheses]
    refs = [[tokenize(r).split() for r in rs] for rs in references]
    orders = min(n, max(len(h) for h in hyps))
    if orders == 0:
        return 0.0
    return float(corpus_nist(refs, hyps, n=orders))


def rouge_l(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], use_stemmer: bool = False
) -> float:
    """ROUGE-L F-measure in percent (rouge-score): the best reference for each hypothesis, averaged."""
    from rouge_score import rouge_scorer

    _check(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    total = sum(
        scorer.score_multi(list(refs), hyp)["rougeL"].fmeasure for hyp, refs in zip(hypotheses, references)
    )
    return 100.0 * total / len(hypotheses)


def normalize_answer(text: str) -> str:
    """ParlAI's normalization for token F1: lower case, punctuation and articles (a, an, the) removed,
    whitespace collapsed."""
    text = _PUNCTUATION.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def pair_token_f1(hypothesis: str, reference: str) -> float:
    """Token F1 (0-1) between a hypothesis and one reference after :func:`normalize_answer`: the harmonic
    mean of precision and recall of the shared tokens (a multiset intersection); 0 if none is shared."""
    hyp = normalize_answer(hypothesis).split()
    ref = normalize_answer(reference).split()
    common = sum((Counter(hyp) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean token F1 in percent, each hypothesis scored against its best reference (ParlAI's F1)."""
    _check(hypotheses, references)
    total = sum(max(pair_token_f1(h, r) for r in refs) for h, refs in zip(hypotheses, references))
    return 100.0 * total / len(hypotheses)


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per token, in nats); inf when that overflows."""
    if math.isnan(mean_nll):
        raise ValueError("mean NLL is NaN")
    return math.exp(mean_nll) if mean_nll < 709.0 else math.inf


def perplexity_from_sums(total_nll: float, num_tokens: int) -> float:
    """Perplexity from the NLL summed over ``num_tokens`` target tokens (sum per batch, then divide once,
    so that batches of different sizes are weighted by their tokens)."""
    if num_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    return perplexity(total_nll / num_tokens)


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of predictions equal to their labels, in percent."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("no predictions to score")
    return 100.0 * sum(int(p) == int(y) for p, y in zip(predictions, labels)) / len(labels)


def generation_metrics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """The E2E report in one call: BLEU, NIST, ROUGE-L."""
    return {
        "bleu": bleu(hypotheses, references),
        "nist": nist(hypotheses, references),
        "rouge_l": rouge_l(hypotheses, references),
    }
