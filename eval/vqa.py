"""VQA accuracy (VQAv2-style soft score), per question type, and the per-type majority baseline.

`accuracy_by_type` and `majority_baseline` return one shape (percentages, counts as ints):
``{"overall": pct, "n": n_questions, "by_type": {type: {"accuracy": pct, "n": n}}}``.
"""

import unicodedata
from collections import Counter, defaultdict

# English-only rules from the VQAv2 evaluator; other languages get no article/number handling.
_EN_ARTICLES = frozenset({"a", "an", "the"})
_EN_NUMBERS = {
    w: str(i)
    for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}


def _is_punct_or_space(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str, lang: str) -> str:
    """NFKC, lower-case, collapse whitespace, strip punctuation (any script: "?", "。", "।", "？")
    from both ends; for English also drop articles and turn number words zero..ten into digits."""
    text = unicodedata.normalize("NFKC", text).lower()
    start, end = 0, len(text)
    while start < end and _is_punct_or_space(text[start]):
        start += 1
    while end > start and _is_punct_or_space(text[end - 1]):
        end -= 1
    words = text[start:end].split()
    if lang == "en":
        words = [_EN_NUMBERS.get(w, w) for w in words if w not in _EN_ARTICLES]
    return " ".join(words)


def _soft_score(prediction: str, answers: list[str]) -> float:
    # VQAv2: full credit once 3 humans agree. With fewer than 3 references the bar is all of them,
    # so a single reference answer means exact match. (The official scorer also averages over
    # leave-one-out subsets of 10 answers: 2 matches there give 60%, here 66.7%.)
    matches = sum(a == prediction for a in answers)
    return min(matches / min(3, len(answers)), 1.0)


def _check_answers(answers: list[str], where: str) -> None:
    if isinstance(answers, str) or not answers:
        raise ValueError(f"{where} must be a non-empty list of answer strings, got {answers!r}")


def vqa_accuracy(predictions: list[str], answers: list[list[str]], lang: str) -> float:
    """Mean soft accuracy in percent; each question scores min(#matching answers / min(3, #answers), 1)
    after `normalize_answer` on both sides."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        raise ValueError("vqa_accuracy needs at least one prediction")
    total = 0.0
    for i, (pred, refs) in enumerate(zip(predictions, answers)):
        _check_answers(refs, f"answers[{i}]")
        total += _soft_score(normalize_answer(pred, lang), [normalize_answer(a, lang) for a in refs])
    return 100.0 * total / len(predictions)


def _check_items(items: list[dict], name: str) -> None:
    if not items:
        raise ValueError(f"{name} is empty")
    for i, item in enumerate(items):
        for key in ("type", "answers"):
            if key not in item:
                raise ValueError(f"{name}[{i}] lacks key {key!r}")
        _check_answers(item["answers"], f"{name}[{i}]['answers']")


def accuracy_by_type(predictions: list[str], eval_items: list[dict], lang: str) -> dict:
    """Soft accuracy overall and per question type; items are ``{"type": str, "answers": [str]}``."""
    _check_items(eval_items, "eval_items")
    if len(predictions) != len(eval_items):
        raise ValueError(f"{len(predictions)} predictions but {len(eval_items)} eval_items")
    scores: dict[str, list[float]] = defaultdict(list)
    for pred, item in zip(predictions, eval_items):
        refs = [normalize_answer(a, lang) for a in item["answers"]]
        scores[item["type"]].append(_soft_score(normalize_answer(pred, lang), refs))
    every = [s for per_type in scores.values() for s in per_type]
    return {
        "overall": 100.0 * sum(every) / len(every),
        "n": len(every),
        "by_type": {t: {"accuracy": 100.0 * sum(s) / len(s), "n": len(s)} for t, s in scores.items()},
    }


def majority_baseline(train_items: list[dict], eval_items: list[dict], lang: str) -> dict:
    """Accuracy of answering every question with the most frequent training answer of its type
    (counted over all human answers, normalised; ties go to the first seen). A type unseen in
    training gets the most frequent answer overall. Same shape as `accuracy_by_type`."""
    _check_items(train_items, "train_items")
    _check_items(eval_items, "eval_items")
    by_type: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for item in train_items:
        answers = [normalize_answer(a, lang) for a in item["answers"]]
        by_type[item["type"]].update(answers)
        overall.update(answers)
    fallback = overall.most_common(1)[0][0]
    majority = {t: counts.most_common(1)[0][0] for t, counts in by_type.items()}
    predictions = [majority.get(item["type"], fallback) for item in eval_items]
    return accuracy_by_type(predictions, eval_items, lang)
