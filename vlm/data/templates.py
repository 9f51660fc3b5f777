"""Prompt templates per task and language, read from one data file (`vlm/data/templates.yaml`).

Instructions are written in the target language, so the prompt itself tells the LM which language to
answer in (mBLIP does the same). Each language lists templates for three tasks: `caption`, `vqa` (with
`{question}`) and `match` (with `{caption}`: does this caption describe the image?, answered with the
language's `yes`/`no` words, mBLIP's second-release matching task). Training picks a template per example;
evaluation uses the first of each list. A language without a template falls back to an English
instruction that names it.

A user's own file (`data.templates`) is laid over the packaged one: every (language, key) it names replaces
the packaged entry, so adding a language is a few lines of YAML and no code.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from data_prep.languages import get_language

log = logging.getLogger(__name__)
PACKAGED = Path(__file__).with_name("templates.yaml")
# The placeholders each task's templates must hold (and the only ones they may hold).
TASK_FIELDS = {"caption": (), "vqa": ("question",), "match": ("caption",)}
ANSWER_KEYS = ("yes", "no")
# Unquoted yes/no/on/off are booleans in YAML 1.1; a user's `yes: oui` still means the key "yes".
_BOOL_KEYS = {True: "yes", False: "no"}


class TemplateError(ValueError):
    """A problem in a templates file; the message is one line naming the file, language and key."""


@dataclass(frozen=True)
class Templates:
    source: str
    prompts: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)  # lang -> task -> templates
    answers: dict[str, dict[str, str]] = field(default_factory=dict)  # lang -> {"yes": ..., "no": ...}

    def get(self, lang: str, task: str) -> tuple[str, ...]:
        """The templates of `task` in `lang`; () when the file has none (callers fall back to English)."""
        return self.prompts.get(lang, {}).get(task, ())

    def languages(self) -> list[str]:
        return sorted(self.prompts)


def _parse_file(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TemplateError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except OSError as err:
        raise TemplateError(f"{path}: cannot be read ({err.strerror or err})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TemplateError(f"{path}: the top level must map language codes to their templates")
    return raw


def _check_language(raw: dict, lang, source: str) -> dict:
    """One language's entry, validated: {task: tuple of templates} | {"yes"/"no": word}."""
    where = f"{source}: '{lang}'"
    try:
        get_language(str(lang))
    except ValueError as err:
        raise TemplateError(f"{where}: {err}") from None
    if not isinstance(raw, dict):
        raise TemplateError(f"{where} must map tasks ({', '.join(TASK_FIELDS)}) and yes/no to templates")
    entry: dict = {}
    for key, value in raw.items():
        key = _BOOL_KEYS.get(key, key) if isinstance(key, bool) else key
        if key in ANSWER_KEYS:
            value = _BOOL_KEYS[value] if isinstance(value, bool) else value
            if not isinstance(value, str) or not value.strip():
                raise TemplateError(f"{where}: '{key}' must be a non-empty word (quote it)")
            entry[key] = value.strip()
            continue
        if key not in TASK_FIELDS:
            raise TemplateError(f"{where}: unknown key '{key}' (known: {', '.join([*TASK_FIELDS, *ANSWER_KEYS])})")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise TemplateError(f"{where}: '{key}' must be a non-empty list of templates")
        for i, template in enumerate(value):
            if not isinstance(template, str) or not template.strip():
                raise TemplateError(f"{where}: {key}[{i}] must be a non-empty string")
            try:
                names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
            except ValueError as err:
                raise TemplateError(f"{where}: {key}[{i}] is not a valid template ({err}; write a literal brace "
                                    f"as {{{{ or }}}})") from None
            required = set(TASK_FIELDS[key])
            if names - required:
                raise TemplateError(f"{where}: {key}[{i}] has unknown placeholder(s) "
                                    f"{', '.join('{' + n + '}' for n in sorted(names - required))}")
            if required - names:
                raise TemplateError(f"{where}: {key}[{i}] lacks the {{{TASK_FIELDS[key][0]}}} placeholder")
        entry[key] = tuple(value)
    return entry


def parse_templates(raw: dict, source: str, base: Templates | None = None) -> Templates:
    """Validate a templates mapping and lay it over `base` (per language and key)."""
    prompts = {lang: dict(tasks) for lang, tasks in (base.prompts if base else {}).items()}
    answers = {lang: dict(words) for lang, words in (base.answers if base else {}).items()}
    for lang, value in raw.items():
        entry = _check_language(value, lang, source)
        lang = str(lang)
        for key, item in entry.items():
            if key in ANSWER_KEYS:
                answers.setdefault(lang, {})[key] = item
            else:
                prompts.setdefault(lang, {})[key] = item
    for lang, tasks in prompts.items():
        if "match" in tasks and set(answers.get(lang, {})) != set(ANSWER_KEYS):
            raise TemplateError(f"{source}: '{lang}': 'match' templates need the answer words \"yes\" and \"no\"")
    return Templates(source, prompts, answers)


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> Templates:
    packaged = parse_templates(_parse_file(PACKAGED), str(PACKAGED))
    if not path:
        return packaged
    return parse_templates(_parse_file(Path(path)), path, base=packaged)


def load_templates(path: str | Path = "") -> Templates:
    """The packaged templates, with the file at `path` laid over them when given. Raises TemplateError
    (one line naming the file, language and key) on a malformed file, FileNotFoundError on a missing one."""
    path = str(path or "")
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"templates file not found: {path}")
    return _load(path, Path(path).stat().st_mtime_ns if path else 0)


def packaged_templates() -> Templates:
    return load_templates("")


def templates_for(data_cfg) -> Templates:
    """The templates a model was trained with (`data.templates`), for its evaluation prompts; the packaged
    ones when the file is not on this machine (a release moved elsewhere), with a warning."""
    path = getattr(data_cfg, "templates", "") if data_cfg is not None else ""
    if path and not Path(path).is_file():
        log.warning("data.templates %s not found; prompting with the packaged templates", path)
        path = ""
    return load_templates(path)


# --- prompts -------------------------------------------------------------------------------------


def caption_prompt(lang: str, instruction: str = "target", templates: Templates | None = None) -> str:
    """The captioning instruction for `lang`: written in `lang` ("target"), or in English naming it ("en",
    Centurio's style; also the fallback for a language without a template). Evaluation uses the first
    template; `templates` defaults to the packaged file."""
    if instruction == "target":
        found = (templates or packaged_templates()).get(lang, "caption")
        if found:
            return found[0]
    return f"Caption in {get_language(lang).name}:"


def _english_vqa_template(lang: str) -> str:
    return "Question: {question} Answer in " + get_language(lang).name + ":"


def vqa_prompt(question: str, lang: str, instruction: str = "target", templates: Templates | None = None) -> str:
    """A question whose answer is wanted in `lang` (xGQA asks German questions for English answers): the first
    VQA template of `lang`, or an English one naming the language ("en" instructions, or no template)."""
    found = (templates or packaged_templates()).get(lang, "vqa") if instruction == "target" or lang == "en" else ()
    return (found[0] if found else _english_vqa_template(lang)).format(question=question)


FALLBACK_MATCH = 'Does the caption "{caption}" describe this image? Answer yes or no in English:'
FALLBACK_ANSWERS = {"yes": "yes", "no": "no"}


def match_templates(lang: str, templates: Templates | None = None) -> tuple[tuple[str, ...], dict[str, str]]:
    """The caption-matching templates of `lang` and its yes/no words (English ones for a language without)."""
    templates = templates or packaged_templates()
    found = templates.get(lang, "match")
    if found:
        return found, templates.answers[lang]
    return (FALLBACK_MATCH,), FALLBACK_ANSWERS


def training_templates(lang: str, task: str, templates: Templates) -> tuple[str, ...]:
    """Every template training may pick for (lang, task); the English fallback when the file has none."""
    if task == "caption":
        return templates.get(lang, "caption") or (caption_prompt(lang, "en"),)
    if task == "vqa":
        return templates.get(lang, "vqa") or (_english_vqa_template(lang),)
    return match_templates(lang, templates)[0]
