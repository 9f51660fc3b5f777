"""Language table (ISO 639-1 <-> Flores-200 <-> name <-> script) and Unicode script detection."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, the key used everywhere in records and configs
    name: str
    flores: str  # Flores-200 code, what NLLB expects
    script: str  # dominant script, as returned by script_of()


def _table(*rows: tuple[str, str, str, str]) -> dict[str, Language]:
    return {code: Language(code, name, flores, script) for code, name, flores, script in rows}


LANGUAGES: dict[str, Language] = _table(
    ("en", "English", "eng_Latn", "Latin"),
    ("de", "German", "deu_Latn", "Latin"),
    ("fr", "French", "fra_Latn", "Latin"),
    ("es", "Spanish", "spa_Latn", "Latin"),
    ("it", "Italian", "ita_Latn", "Latin"),
    ("pt", "Portuguese", "por_Latn", "Latin"),
    ("nl", "Dutch", "nld_Latn", "Latin"),
    ("sv", "Swedish", "swe_Latn", "Latin"),
    ("da", "Danish", "dan_Latn", "Latin"),
    ("fi", "Finnish", "fin_Latn", "Latin"),
    ("pl", "Polish", "pol_Latn", "Latin"),
    ("cs", "Czech", "ces_Latn", "Latin"),
    ("ro", "Romanian", "ron_Latn", "Latin"),
    ("hu", "Hungarian", "hun_Latn", "Latin"),
    ("tr", "Turkish", "tur_Latn", "Latin"),
    ("vi", "Vietnamese", "vie_Latn", "Latin"),
    ("id", "Indonesian", "ind_Latn", "Latin"),
    ("ms", "Malay", "zsm_Latn", "Latin"),
    ("tl", "Tagalog", "tgl_Latn", "Latin"),
    ("fil", "Filipino", "tgl_Latn", "Latin"),  # XM3600's code for the standard form of Tagalog
    ("hr", "Croatian", "hrv_Latn", "Latin"),
    ("no", "Norwegian (Bokmål)", "nob_Latn", "Latin"),  # XM3600 "no" is Bokmål, not Nynorsk
    ("mi", "Maori", "mri_Latn", "Latin"),
    ("quz", "Cusco Quechua", "quy_Latn", "Latin"),  # not in Flores-200; Ayacucho Quechua is the nearest
    ("sw", "Swahili", "swh_Latn", "Latin"),
    ("ru", "Russian", "rus_Cyrl", "Cyrillic"),
    ("uk", "Ukrainian", "ukr_Cyrl", "Cyrillic"),
    ("bg", "Bulgarian", "bul_Cyrl", "Cyrillic"),
    ("el", "Greek", "ell_Grek", "Greek"),
    ("ar", "Arabic", "arb_Arab", "Arabic"),
    ("fa", "Persian", "pes_Arab", "Arabic"),
    ("ur", "Urdu", "urd_Arab", "Arabic"),
    ("he", "Hebrew", "heb_Hebr", "Hebrew"),
    ("hi", "Hindi", "hin_Deva", "Devanagari"),
    ("mr", "Marathi", "mar_Deva", "Devanagari"),
    ("ne", "Nepali", "npi_Deva", "Devanagari"),
    ("bn", "Bengali", "ben_Beng", "Bengali"),
    ("ta", "Tamil", "tam_Taml", "Tamil"),
    ("te", "Telugu", "tel_Telu", "Telugu"),
    ("kn", "Kannada", "kan_Knda", "Kannada"),
    ("ml", "Malayalam", "mal_Mlym", "Malayalam"),
    ("si", "Sinhala", "sin_Sinh", "Sinhala"),
    ("th", "Thai", "tha_Thai", "Thai"),
    ("am", "Amharic", "amh_Ethi", "Ethiopic"),
    ("ka", "Georgian", "kat_Geor", "Georgian"),
    ("zh", "Chinese (Simplified)", "zho_Hans", "Han"),
    ("ja", "Japanese", "jpn_Jpan", "Japanese"),
    ("ko", "Korean", "kor_Hang", "Hangul"),
    # The rest of mBLIP's languages that Flores-200 covers: with these rows a user adds any of them to
    # data.languages and vlm/data/templates.yaml without code.
    ("af", "Afrikaans", "afr_Latn", "Latin"),
    ("sq", "Albanian", "als_Latn", "Latin"),
    ("hy", "Armenian", "hye_Armn", "Armenian"),
    ("az", "Azerbaijani", "azj_Latn", "Latin"),
    ("eu", "Basque", "eus_Latn", "Latin"),
    ("be", "Belarusian", "bel_Cyrl", "Cyrillic"),
    ("bs", "Bosnian", "bos_Latn", "Latin"),
    ("ca", "Catalan", "cat_Latn", "Latin"),
    ("ceb", "Cebuano", "ceb_Latn", "Latin"),
    ("et", "Estonian", "est_Latn", "Latin"),
    ("gl", "Galician", "glg_Latn", "Latin"),
    ("gu", "Gujarati", "guj_Gujr", "Gujarati"),
    ("ha", "Hausa", "hau_Latn", "Latin"),
    ("is", "Icelandic", "isl_Latn", "Latin"),
    ("ig", "Igbo", "ibo_Latn", "Latin"),
    ("ga", "Irish", "gle_Latn", "Latin"),
    ("jv", "Javanese", "jav_Latn", "Latin"),
    ("kk", "Kazakh", "kaz_Cyrl", "Cyrillic"),
    ("km", "Khmer", "khm_Khmr", "Khmer"),
    ("ky", "Kyrgyz", "kir_Cyrl", "Cyrillic"),
    ("ku", "Kurdish (Kurmanji)", "kmr_Latn", "Latin"),
    ("lo", "Lao", "lao_Laoo", "Lao"),
    ("lv", "Latvian", "lvs_Latn", "Latin"),
    ("lt", "Lithuanian", "lit_Latn", "Latin"),
    ("lb", "Luxembourgish", "ltz_Latn", "Latin"),
    ("mk", "Macedonian", "mkd_Cyrl", "Cyrillic"),
    ("mn", "Mongolian", "khk_Cyrl", "Cyrillic"),
    ("my", "Burmese", "mya_Mymr", "Myanmar"),
    ("or", "Odia", "ory_Orya", "Oriya"),
    ("pa", "Punjabi", "pan_Guru", "Gurmukhi"),
    ("ps", "Pashto", "pbt_Arab", "Arabic"),
    ("sr", "Serbian", "srp_Cyrl", "Cyrillic"),
    ("sk", "Slovak", "slk_Latn", "Latin"),
    ("sl", "Slovenian", "slv_Latn", "Latin"),
    ("so", "Somali", "som_Latn", "Latin"),
    ("su", "Sundanese", "sun_Latn", "Latin"),
    ("tg", "Tajik", "tgk_Cyrl", "Cyrillic"),
    ("uz", "Uzbek", "uzn_Latn", "Latin"),
    ("cy", "Welsh", "cym_Latn", "Latin"),
    ("xh", "Xhosa", "xho_Latn", "Latin"),
    ("yo", "Yoruba", "yor_Latn", "Latin"),
    ("zu", "Zulu", "zul_Latn", "Latin"),
)

# Scripts a language may legitimately come out in besides its own: a Japanese answer can be
# all kanji ("赤"), which script_of() reports as Han.
_ALSO_ACCEPTED: dict[str, frozenset[str]] = {"ja": frozenset({"Han"})}

# Unicode character-name prefixes that do not equal the script name (checked before the first word).
_NAME_PREFIXES: tuple[tuple[str, str], ...] = (
    ("CJK ", "Han"),
    ("IDEOGRAPHIC ", "Han"),
    ("FULLWIDTH LATIN ", "Latin"),
    ("HALFWIDTH KATAKANA ", "Katakana"),
    ("HALFWIDTH HANGUL ", "Hangul"),
    ("KATAKANA-HIRAGANA ", "Katakana"),
)
_KANA = ("Hiragana", "Katakana")

# Languages written without spaces between words: metrics segment them by character.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my"})


def get_language(code: str) -> Language:
    if code not in LANGUAGES:
        raise ValueError(f"unknown language code {code!r} (known: {', '.join(LANGUAGES)})")
    return LANGUAGES[code]


def validate_languages(codes: Iterable[str] | str) -> list[str]:
    """Check every code, drop duplicates (keeping order). A string is read as 'en,de,fr' (CLI form)."""
    if isinstance(codes, str):
        codes = [c.strip() for c in codes.split(",") if c.strip()]
    checked = [get_language(code).code for code in codes]
    if not checked:
        raise ValueError("no languages given")
    return list(dict.fromkeys(checked))


@lru_cache(maxsize=8192)
def _letter_script(ch: str) -> str | None:
    """Script of a letter (None for anything else); cached because texts reuse few characters."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    for prefix, script in _NAME_PREFIXES:
        if name.startswith(prefix):
            return script
    return name.split(" ", 1)[0].title() or None


def script_of(text: str) -> str | None:
    """Dominant script of the letters in text (None when it has none).

    Only category L* characters count, so digits, punctuation, spaces and combining vowel signs are
    ignored. Any kana makes the text Japanese: kana and Han are then counted together as "Japanese".
    """
    counts = Counter(filter(None, map(_letter_script, text)))
    if not counts:
        return None
    if any(counts[k] for k in _KANA):
        counts["Japanese"] += counts.pop("Han", 0) + counts.pop("Hiragana", 0) + counts.pop("Katakana", 0)
    return counts.most_common(1)[0][0]


def matches_language_script(text: str, code: str) -> bool:
    language = get_language(code)
    script = script_of(text)
    return script == language.script or script in _ALSO_ACCEPTED.get(code, frozenset())


# The 100 languages of M2M100 (facebook/m2m100_*), as its `__xx__` tokens spell them: mostly ISO 639-1.
M2M100_CODES = frozenset(
    "af am ar ast az ba be bg bn br bs ca ceb cs cy da de el en es et fa ff fi fr fy ga gd gl gu ha he hi hr ht hu "
    "hy id ig ilo is it ja jv ka kk km kn ko lb lg ln lo lt lv mg mk ml mn mr ms my ne nl no ns oc or pa pl ps pt "
    "ro ru sd si sk sl so sq sr ss su sv sw ta th tl tn tr uk ur uz vi wo xh yi yo zh zu".split()
)
_M2M100_ALIASES = {"fil": "tl"}  # our key -> M2M100's code where they differ


def m2m100_code(code: str) -> str:
    """M2M100's code for one of our languages; ValueError for a language M2M100 was not trained on."""
    language = get_language(code)
    m2m = _M2M100_ALIASES.get(code, code)
    if m2m not in M2M100_CODES:
        raise ValueError(f"M2M100 has no language code for {code!r} ({language.name})")
    return m2m
