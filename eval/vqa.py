"""VQA accuracy (VQAv2-style soft score), per question type, and the per-type majority baseline.

`accuracy_by_type` and `majority_baseline` return one shape (percentages, counts as ints):
``{"overall": pct, "exact": pct, "relaxed": pct, "n": n_questions, "by_type": {type: {"accuracy": pct, "n": n}}}``.
"overall" is the soft accuracy (the official leave-one-out VQAv2 score for questions with 10 answers, exact
match against any answer otherwise),
"exact" the exact match against any gold answer, "relaxed" `relaxed_match`; empty answers never score.
"""

import re
import unicodedata
from collections import Counter, defaultdict

from data_prep.languages import NO_SPACE_LANGUAGES

# English-only rules from the VQAv2 evaluator; other languages get no article/number handling.
_EN_ARTICLES = frozenset({"a", "an", "the"})
_EN_NUMBERS = {
    w: str(i)
    for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}


def _is_punct_or_space(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str, lang: str) -> str:
    """NFKC, casefold, collapse whitespace, strip punctuation (any script: "?", "。", "।", "？") from both
    ends, by Unicode category, so combining marks (Devanagari, Thai, Sinhala vowel signs) survive; for
    English also drop articles and turn number words zero..ten into digits."""
    text = unicodedata.normalize("NFKC", text).casefold()
    start, end = 0, len(text)
    while start < end and _is_punct_or_space(text[start]):
        start += 1
    while end > start and _is_punct_or_space(text[end - 1]):
        end -= 1
    words = text[start:end].split()
    if lang == "en":
        words = [_EN_NUMBERS.get(w, w) for w in words if w not in _EN_ARTICLES]
    return " ".join(words)


VQAV2_ANSWERS = 10  # VQAv2 collects 10 human answers per question


def vqav2_score(prediction: str, answers: list[str]) -> float:
    """The official VQAv2 accuracy of one normalised prediction: over the leave-one-out subsets of the
    human answers, min(1, matches among the others / 3), averaged (2 of 10 matching gives 60%)."""
    if len(answers) < 2:
        raise ValueError(f"leave-one-out accuracy needs at least 2 answers, got {len(answers)}")
    matches = sum(a == prediction for a in answers)
    # Leaving out a matching answer leaves matches - 1 among the others, leaving out another leaves matches.
    left_out_match = min(1.0, (matches - 1) / 3) if matches else 0.0
    left_out_other = min(1.0, matches / 3)
    return (matches * left_out_match + (len(answers) - matches) * left_out_other) / len(answers)


def _soft_score(prediction: str, answers: list[str]) -> float:
    # VQAv2-style sets (10 human answers): the official leave-one-out accuracy. Otherwise the answers are
    # equally valid variants (MaXM's processed answers, xGQA's single label): matching any one is correct,
    # as mBLIP and Centurio score them. An empty prediction never is.
    if len(answers) >= VQAV2_ANSWERS:
        return vqav2_score(prediction, answers)
    return float(exact_match(prediction, answers))


_YES_NO = re.compile(r"\b(yes|no)\b")


def yes_no(prediction: str) -> str | None:
    """The first whole word "yes" or "no" of a normalised English prediction ("yes, it is" -> "yes"); words
    that merely contain "no" ("not", "none", "know") are not answers."""
    found = _YES_NO.search(prediction)
    return found.group(1) if found else None


def exact_match(prediction: str, answers: list[str]) -> bool:
    """The normalised prediction equals any normalised gold answer; an empty prediction never matches."""
    return bool(prediction) and prediction in answers


def relaxed_match(prediction: str, answers: list[str], lang: str) -> bool:
    """mBLIP's relaxed accuracy made safe: the prediction starts or ends with a gold answer, at a word
    boundary in scripts that separate words with spaces; yes/no gold answers read the prediction's first
    whole yes/no word (English). Empty predictions and empty gold answers never match."""
    if not prediction:
        return False
    if lang == "en" and set(answers) <= {"yes", "no"}:
        return yes_no(prediction) in answers
    spaced = lang not in NO_SPACE_LANGUAGES  # there a gold answer may start or end a prediction anywhere
    for gold in filter(None, answers):
        if prediction == gold:
            return True
        head, tail = (gold + " ", " " + gold) if spaced else (gold, gold)
        if prediction.startswith(head) or prediction.endswith(tail):
            return True
    return False


def _check_answers(answers: list[str], where: str) -> None:
    if isinstance(answers, str) or not answers:
        raise ValueError(f"{where} must be a non-empty list of answer strings, got {answers!r}")


def vqa_accuracy(predictions: list[str], answers: list[list[str]], lang: str) -> float:
    """Mean soft accuracy in percent after `normalize_answer` on both sides: VQAv2's leave-one-out score for
    10-answer questions, exact match against any answer otherwise."""
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
    exact, relaxed = [], []
    for pred, item in zip(predictions, eval_items):
        refs = [normalize_answer(a, lang) for a in item["answers"]]
        pred = normalize_answer(pred, lang)
        scores[item["type"]].append(_soft_score(pred, refs))
        exact.append(exact_match(pred, refs))
        relaxed.append(relaxed_match(pred, refs, lang))
    every = [s for per_type in scores.values() for s in per_type]
    return {
        "overall": 100.0 * sum(every) / len(every),
        "exact": 100.0 * sum(exact) / len(exact),
        "relaxed": 100.0 * sum(relaxed) / len(relaxed),
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
