"""The synthetic domain's grammar: English text <-> Meaning <-> text in any phrase-table language.

The English parser is compiled from the English phrase table itself, so English generation
(synthetic.py renders through Renderer(TABLES["en"])) and parsing can never drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from string import Formatter

# Which canonical slots a meaning of each kind carries, per object.
KIND_SLOTS: dict[str, tuple[str, ...]] = {
    "caption": ("size", "colour", "shape", "pos"),
    "q_count": (),
    "q_colour": ("shape",),
    "q_shape": ("colour",),
    "q_where": ("colour", "shape"),
    "a_count": ("number",),
    "a_colour": ("colour",),
    "a_shape": ("shape",),
    "a_where": ("pos",),
}
# Captions introduce objects ("a red circle"); questions refer back to them ("the red circle");
# answers are bare citation forms.
_CONTEXT: dict[str, str] = {
    "caption": "indef", "q_count": "def", "q_colour": "def", "q_shape": "def", "q_where": "def",
    "a_count": "base", "a_colour": "base", "a_shape": "base", "a_where": "base",
}
# Answers are the bare word unless a table overrides the template.
ANSWER_TEMPLATES: dict[str, str] = {
    "a_count": "{number}", "a_colour": "{colour}", "a_shape": "{noun}", "a_where": "{pos}",
}
# Template field -> (canonical slot, table section). {noun} is the shape, or the table's "thing" when
# the meaning has no shape ("what shape is the red object?").
_FIELDS: dict[str, tuple[str, str]] = {
    "noun": ("shape", "shapes"), "size": ("size", "sizes"), "colour": ("colour", "colours"),
    "pos": ("pos", "positions"), "number": ("number", "numbers"),
}


@dataclass(frozen=True)
class Meaning:
    kind: str  # a key of KIND_SLOTS
    objects: tuple[Mapping[str, str], ...]  # one mapping slot -> canonical id per object (one for non-captions)


def form(entry: str | Mapping[str, str], context: str, gender: str = "") -> str:
    """The form of a word entry for a context ("indef", "def", "base") and the gender it agrees with."""
    if isinstance(entry, str):
        return entry
    for key in (f"{context}.{gender}", context, gender) if gender else (context,):
        if key in entry:
            return entry[key]
    return entry["base"]


@lru_cache(maxsize=None)
def _field_names(template: str) -> tuple[str, ...]:
    return tuple(field for _, field, _, _ in Formatter().parse(template) if field is not None)


def _template(table: Mapping, kind: str) -> str:
    return table[kind] if kind in table else ANSWER_TEMPLATES[kind]


def _fill(template: str, table: Mapping, obj: Mapping[str, str], context: str) -> str:
    noun = table["shapes"][obj["shape"]] if "shape" in obj else table["thing"]
    gender = "" if isinstance(noun, str) else noun.get("gender", "")
    values = {}
    for field in _field_names(template):
        if field == "noun":
            entry = noun
        elif field in _FIELDS:
            slot, section = _FIELDS[field]
            entry = table[section][obj[slot]]
        else:
            entry = table["agree"][field]
        values[field] = form(entry, context, gender)
    return template.format(**values)


class Renderer:
    """Renders meanings in one language.

    Phrases are cached per object: the domain has only a few hundred distinct ones, and generating or
    translating 20k captions would otherwise spend seconds re-filling the same templates.
    """

    def __init__(self, table: Mapping) -> None:
        self.table = table
        self._phrases: dict[tuple, str] = {}

    def _phrase(self, template: str, obj: Mapping[str, str], context: str) -> str:
        key = (template, context, *obj.items())
        if key not in self._phrases:
            self._phrases[key] = _fill(template, self.table, obj, context)
        return self._phrases[key]

    def render(self, meaning: Meaning) -> str:
        if meaning.kind == "caption":
            phrases = (self._phrase(self.table["object"], obj, "indef") for obj in meaning.objects)
            return self.table["caption"].format(objects=self.table["and"].join(phrases))
        return self._phrase(_template(self.table, meaning.kind), meaning.objects[0], _CONTEXT[meaning.kind])


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern
    ids: dict[str, dict[str, str]]  # slot -> {English word -> canonical id}

    def read(self, text: str) -> dict[str, str] | None:
        match = self.regex.fullmatch(text)
        if match is None:
            return None
        return {slot: self.ids[slot][word] for slot, word in match.groupdict().items()}


def _compile(template: str, table: Mapping, context: str, slots: tuple[str, ...]) -> _Pattern:
    """A pattern matching the template's English surface, with one named group per slot."""
    parts, ids = [], {}
    for literal, field, _, _ in Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is None:
            continue
        slot, section = _FIELDS.get(field, (None, None))
        if slot in slots:
            ids[slot] = {form(entry, context): key for key, entry in table[section].items()}
            words = sorted(ids[slot], key=len, reverse=True)  # longest first: no prefix steals a match
            parts.append(f"(?P<{slot}>{'|'.join(map(re.escape, words))})")
        elif field == "noun":
            parts.append(re.escape(form(table["thing"], context)))
        else:
            parts.append(re.escape(form(table["agree"][field], context)))
    return _Pattern(re.compile("".join(parts)), ids)


class EnglishParser:
    """Reads English text of the synthetic grammar back into a Meaning (None when out of grammar)."""

    def __init__(self, table: Mapping) -> None:
        self._and = table["and"]
        self._caption = re.compile(re.escape(table["caption"]).replace(re.escape("{objects}"), "(.+)"))
        self._object = _compile(table["object"], table, "indef", KIND_SLOTS["caption"])
        self._patterns = [
            (kind, _compile(_template(table, kind), table, _CONTEXT[kind], slots))
            for kind, slots in KIND_SLOTS.items()
            if kind != "caption"
        ]

    def parse(self, text: str) -> Meaning | None:
        # Lenient about case, spacing and a final full stop; strict about everything else.
        text = " ".join(text.lower().split()).removesuffix(".")
        for kind, pattern in self._patterns:
            if (slots := pattern.read(text)) is not None:
                return Meaning(kind, (slots,))
        caption = self._caption.fullmatch(text)
        if caption is None:
            return None
        objects = [self._object.read(part) for part in caption[1].split(self._and)]
        if None in objects:
            return None
        return Meaning("caption", tuple(objects))
