"""Per-language phrase tables for the synthetic scene domain (data only; phrase_grammar.py reads them).

Keys are the canonical English ids used by synthetic.py (shapes, colours, sizes, positions, numbers).

A word entry is either a plain string (it never changes) or a dict of forms. A form is looked up as
"<context>.<gender>", then "<context>", then "<gender>", then "base", where context is "indef" (captions:
"a red circle") or "def" (questions: "the red circle"), and gender is the gender/noun class of the noun the
word agrees with. "base" is the citation form: the one used in answers ("red", "circle").

Nouns (shapes and "thing", the noun of "the red object") may carry a "gender".
"agree" holds extra words that agree with the noun (articles, copulas, "of"), usable in any template.

Templates use str.format fields: {noun} {size} {colour} {pos} plus the names in "agree"; the answer
templates (a_*) default to the bare word (see phrase_grammar.ANSWER_TEMPLATES).
"""

from __future__ import annotations

def _de_adj(stem: str) -> dict[str, str]:
    # Nominative endings: after ein/eine/ein (mixed declension) and after der/die/das (weak: always -e).
    return {"base": stem, "m": stem + "er", "f": stem + "e", "n": stem + "es", "def": stem + "e"}


def _ar_adj(masc: str, fem: str) -> dict[str, str]:
    # Arabic adjectives follow the noun and agree in gender and definiteness (the "ال" prefix).
    return {"base": masc, "f": fem, "def": "ال" + masc, "def.f": "ال" + fem}


def _ar_noun(word: str, gender: str) -> dict[str, str]:
    return {"base": word, "def": "ال" + word, "gender": gender}


def _sw_adj(cls9: str, cls3: str, cls7: str, base: str) -> dict[str, str]:
    # Swahili adjectives take the prefix of the noun class: 9 (duara, nyota), 3 (mraba), 7 (kitu).
    return {"base": base, "9": cls9, "3": cls3, "7": cls7}


def _sw_of(word: str) -> dict[str, str]:
    # Colour nouns used as adjectives take the associative "-a" in the noun's class: "ya/wa/cha kijani".
    return _sw_adj("ya " + word, "wa " + word, "cha " + word, word)


def _ja_adj(base: str, attributive: str) -> dict[str, str]:
    return {"base": base, "indef": attributive, "def": attributive}


TABLES: dict[str, dict] = {
    "en": {
        "shapes": {"circle": "circle", "square": "square", "triangle": "triangle", "star": "star"},
        "thing": "object",
        "sizes": {"small": "small", "big": "big"},
        "colours": {
            "red": "red", "green": "green", "blue": "blue",
            "yellow": "yellow", "purple": "purple", "orange": "orange",
        },
        "positions": {
            "left": "on the left", "right": "on the right", "top": "at the top",
            "bottom": "at the bottom", "centre": "in the centre",
        },
        "numbers": {"one": "one", "two": "two"},
        "agree": {"art": {"indef": "a", "def": "the"}},
        "object": "{art} {size} {colour} {noun} {pos}",
        "and": " and ",
        "caption": "{objects}",
        "q_count": "how many shapes are there?",
        "q_colour": "what colour is {art} {noun}?",
        "q_shape": "what shape is {art} {colour} {noun}?",
        "q_where": "where is {art} {colour} {noun}?",
    },
    "de": {
        "shapes": {
            "circle": {"base": "Kreis", "gender": "m"},
            "square": {"base": "Quadrat", "gender": "n"},
            "triangle": {"base": "Dreieck", "gender": "n"},
            "star": {"base": "Stern", "gender": "m"},
        },
        "thing": {"base": "Objekt", "gender": "n"},
        "sizes": {"small": _de_adj("klein"), "big": _de_adj("groß")},
        "colours": {
            "red": _de_adj("rot"), "green": _de_adj("grün"), "blue": _de_adj("blau"),
            "yellow": _de_adj("gelb"), "purple": _de_adj("violett"), "orange": _de_adj("orangefarben"),
        },
        "positions": {
            "left": "links", "right": "rechts", "top": "oben", "bottom": "unten", "centre": "in der Mitte",
        },
        "numbers": {"one": "eins", "two": "zwei"},
        "agree": {
            "art": {"indef.m": "ein", "indef.f": "eine", "indef.n": "ein",
                    "def.m": "der", "def.f": "die", "def.n": "das"},
        },
        "object": "{art} {size} {colour} {noun} {pos}",
        "and": " und ",
        "caption": "{objects}",
        "q_count": "wie viele Formen gibt es?",
        "q_colour": "welche Farbe hat {art} {noun}?",
        "q_shape": "welche Form hat {art} {colour} {noun}?",
        "q_where": "wo ist {art} {colour} {noun}?",
    },
    "fr": {
        # The definite article is part of the noun's "def" form because of elision (l'étoile, l'objet).
        "shapes": {
            "circle": {"base": "cercle", "def": "le cercle", "gender": "m"},
            "square": {"base": "carré", "def": "le carré", "gender": "m"},
            "triangle": {"base": "triangle", "def": "le triangle", "gender": "m"},
            "star": {"base": "étoile", "def": "l'étoile", "gender": "f"},
        },
        "thing": {"base": "objet", "def": "l'objet", "gender": "m"},
        "sizes": {"small": {"base": "petit", "f": "petite"}, "big": {"base": "grand", "f": "grande"}},
        "colours": {
            "red": "rouge", "green": {"base": "vert", "f": "verte"}, "blue": {"base": "bleu", "f": "bleue"},
            "yellow": "jaune", "purple": {"base": "violet", "f": "violette"}, "orange": "orange",
        },
        "positions": {
            "left": "à gauche", "right": "à droite", "top": "en haut", "bottom": "en bas", "centre": "au centre",
        },
        "numbers": {"one": "une", "two": "deux"},
        "agree": {"art": {"base": "un", "f": "une"}},
        # Size adjectives (petit, grand) precede the noun, colour adjectives follow it.
        "object": "{art} {size} {noun} {colour} {pos}",
        "and": " et ",
        "caption": "{objects}",
        "q_count": "combien y a-t-il de formes ?",
        "q_colour": "de quelle couleur est {noun} ?",
        "q_shape": "quelle est la forme de {noun} {colour} ?",
        "q_where": "où est {noun} {colour} ?",
    },
    "ru": {
        "shapes": {
            "circle": {"base": "круг", "gender": "m"},
            "square": {"base": "квадрат", "gender": "m"},
            "triangle": {"base": "треугольник", "gender": "m"},
            "star": {"base": "звезда", "gender": "f"},
        },
        "thing": {"base": "предмет", "gender": "m"},
        "sizes": {
            "small": {"base": "маленький", "f": "маленькая"},
            "big": {"base": "большой", "f": "большая"},
        },
        "colours": {
            "red": {"base": "красный", "f": "красная"},
            "green": {"base": "зелёный", "f": "зелёная"},
            "blue": {"base": "синий", "f": "синяя"},
            "yellow": {"base": "жёлтый", "f": "жёлтая"},
            "purple": {"base": "фиолетовый", "f": "фиолетовая"},
            "orange": {"base": "оранжевый", "f": "оранжевая"},
        },
        "positions": {
            "left": "слева", "right": "справа", "top": "сверху", "bottom": "снизу", "centre": "в центре",
        },
        # Agrees with the feminine "фигура" of the question.
        "numbers": {"one": "одна", "two": "две"},
        "object": "{size} {colour} {noun} {pos}",
        "and": " и ",
        "caption": "{objects}",
        "q_count": "сколько здесь фигур?",
        "q_colour": "какого цвета {noun}?",
        "q_shape": "какой формы {colour} {noun}?",
        "q_where": "где {colour} {noun}?",
    },
    "hi": {
        "shapes": {
            "circle": {"base": "वृत्त", "gender": "m"},
            "square": {"base": "वर्ग", "gender": "m"},
            "triangle": {"base": "त्रिभुज", "gender": "m"},
            "star": {"base": "तारा", "gender": "m"},
        },
        "thing": {"base": "वस्तु", "gender": "f"},
        "sizes": {"small": {"base": "छोटा", "f": "छोटी"}, "big": {"base": "बड़ा", "f": "बड़ी"}},
        "colours": {
            "red": "लाल", "green": {"base": "हरा", "f": "हरी"}, "blue": {"base": "नीला", "f": "नीली"},
            "yellow": {"base": "पीला", "f": "पीली"}, "purple": "बैंगनी", "orange": "नारंगी",
        },
        "positions": {
            "left": "बाईं ओर", "right": "दाईं ओर", "top": "ऊपर", "bottom": "नीचे", "centre": "बीच में",
        },
        "numbers": {"one": "एक", "two": "दो"},
        "agree": {"of": {"base": "का", "f": "की"}},
        # Postpositional: the place phrase comes first, "एक" is the indefinite article.
        "object": "{pos} एक {size} {colour} {noun}",
        "and": " और ",
        "caption": "{objects}",
        "q_count": "कितनी आकृतियाँ हैं?",
        "q_colour": "{noun} किस रंग {of} है?",
        "q_shape": "{colour} {noun} का आकार क्या है?",
        "q_where": "{colour} {noun} कहाँ है?",
    },
    "si": {
        # The -ක් suffix marks an indefinite noun ("a circle"); the bare form is definite.
        "shapes": {
            "circle": {"base": "රවුම", "indef": "රවුමක්"},
            "square": {"base": "සමචතුරස්\u200dරය", "indef": "සමචතුරස්\u200dරයක්"},
            "triangle": {"base": "ත්\u200dරිකෝණය", "indef": "ත්\u200dරිකෝණයක්"},
            "star": {"base": "තරුව", "indef": "තරුවක්"},
        },
        "thing": "වස්තුව",
        "sizes": {"small": "කුඩා", "big": "විශාල"},
        "colours": {"red": "රතු", "green": "කොළ", "blue": "නිල්", "yellow": "කහ", "purple": "දම්", "orange": "තැඹිලි"},
        "positions": {
            "left": "වම් පැත්තේ", "right": "දකුණු පැත්තේ", "top": "ඉහළින්", "bottom": "පහළින්", "centre": "මැද",
        },
        "numbers": {"one": "එකක්", "two": "දෙකක්"},
        "object": "{pos} {size} {colour} {noun}",
        "and": " සහ ",
        "caption": "{objects}",
        "q_count": "හැඩ කීයක් තිබේද?",
        "q_colour": "{noun} මොන පාටද?",
        # "වස්තුවේ" is the genitive of {noun} ("of the object"); spelled out since no other template needs it.
        "q_shape": "{colour} වස්තුවේ හැඩය කුමක්ද?",
        "q_where": "{colour} {noun} කොහේද?",
    },
    "zh": {
        "shapes": {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形"},
        "thing": "物体",
        "sizes": {"small": "小", "big": "大"},
        "colours": {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"},
        "positions": {"left": "左边", "right": "右边", "top": "上边", "bottom": "下边", "centre": "中间"},
        "numbers": {"one": "一个", "two": "两个"},
        "object": "{pos}有一个{size}的{colour}{noun}",
        "and": "，",
        "caption": "{objects}",
        "q_count": "有几个图形？",
        "q_colour": "{noun}是什么颜色的？",
        "q_shape": "{colour}的{noun}是什么形状？",
        "q_where": "{colour}{noun}在哪里？",
    },
    "ja": {
        "shapes": {"circle": "円", "square": "正方形", "triangle": "三角形", "star": "星"},
        "thing": "物体",
        "sizes": {"small": "小さい", "big": "大きい"},
        "colours": {
            "red": _ja_adj("赤", "赤い"), "green": _ja_adj("緑", "緑の"), "blue": _ja_adj("青", "青い"),
            "yellow": _ja_adj("黄色", "黄色い"), "purple": _ja_adj("紫", "紫の"),
            "orange": _ja_adj("オレンジ色", "オレンジ色の"),
        },
        "positions": {"left": "左側", "right": "右側", "top": "上部", "bottom": "下部", "centre": "中央"},
        "numbers": {"one": "一つ", "two": "二つ"},
        # Clauses chain as "…があり、…があります" ("there is …, and there is …").
        "object": "{pos}に{size}{colour}{noun}",
        "and": "があり、",
        "caption": "{objects}があります",
        "q_count": "図形はいくつありますか？",
        "q_colour": "{noun}は何色ですか？",
        "q_shape": "{colour}{noun}はどんな形ですか？",
        "q_where": "{colour}{noun}はどこにありますか？",
    },
    "ar": {
        "shapes": {
            "circle": _ar_noun("دائرة", "f"),
            "square": _ar_noun("مربع", "m"),
            "triangle": _ar_noun("مثلث", "m"),
            "star": _ar_noun("نجمة", "f"),
        },
        "thing": _ar_noun("جسم", "m"),
        "sizes": {"small": _ar_adj("صغير", "صغيرة"), "big": _ar_adj("كبير", "كبيرة")},
        "colours": {
            "red": _ar_adj("أحمر", "حمراء"), "green": _ar_adj("أخضر", "خضراء"),
            "blue": _ar_adj("أزرق", "زرقاء"), "yellow": _ar_adj("أصفر", "صفراء"),
            "purple": _ar_adj("بنفسجي", "بنفسجية"), "orange": _ar_adj("برتقالي", "برتقالية"),
        },
        "positions": {
            "left": "على اليسار", "right": "على اليمين", "top": "في الأعلى",
            "bottom": "في الأسفل", "centre": "في الوسط",
        },
        "numbers": {"one": "واحد", "two": "اثنان"},
        # Adjectives follow the noun; "و" (and) is written joined to the next word.
        "object": "{noun} {size} {colour} {pos}",
        "and": " و",
        "caption": "{objects}",
        "q_count": "كم عدد الأشكال؟",
        "q_colour": "ما لون {noun}؟",
        "q_shape": "ما شكل {noun} {colour}؟",
        "q_where": "أين {noun} {colour}؟",
    },
    "sw": {
        "shapes": {
            "circle": {"base": "duara", "gender": "9"},
            "square": {"base": "mraba", "gender": "3"},
            "triangle": {"base": "pembetatu", "gender": "9"},
            "star": {"base": "nyota", "gender": "9"},
        },
        "thing": {"base": "kitu", "gender": "7"},
        "sizes": {
            "small": _sw_adj("ndogo", "mdogo", "kidogo", "ndogo"),
            "big": _sw_adj("kubwa", "mkubwa", "kikubwa", "kubwa"),
        },
        "colours": {
            "red": _sw_adj("nyekundu", "mwekundu", "chekundu", "nyekundu"),
            "green": _sw_of("kijani"), "blue": _sw_of("buluu"), "yellow": _sw_of("njano"),
            "purple": _sw_of("zambarau"), "orange": _sw_of("chungwa"),
        },
        "positions": {
            "left": "upande wa kushoto", "right": "upande wa kulia", "top": "juu",
            "bottom": "chini", "centre": "katikati",
        },
        "numbers": {"one": "moja", "two": "mbili"},
        "agree": {"of": {"9": "ya", "3": "wa"}, "is_at": {"9": "iko", "3": "uko"}},
        "object": "{noun} {size} {colour} {pos}",
        "and": " na ",
        "caption": "{objects}",
        "q_count": "kuna maumbo mangapi?",
        "q_colour": "{noun} ni {of} rangi gani?",
        "q_shape": "{noun} {colour} ni umbo gani?",
        "q_where": "{noun} {colour} {is_at} wapi?",
    },
}
