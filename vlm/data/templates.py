"""Prompt templates per task and language.

Instructions are written in the target language, so the prompt itself tells the LM which language to
answer in (mBLIP does the same). A language without a template falls back to an English instruction
that names it.
"""

from __future__ import annotations

from data_prep.languages import get_language

CAPTION_PROMPTS = {
    "en": "Caption in English:",
    "de": "Bildunterschrift auf Deutsch:",
    "fr": "Légende en français :",
    "es": "Descripción en español:",
    "ru": "Описание на русском:",
    "hi": "हिंदी में विवरण:",
    "si": "සිංහලෙන් විස්තරය:",
    "zh": "中文描述：",
    "ja": "日本語の説明：",
    "ar": "وصف بالعربية:",
    "sw": "Maelezo kwa Kiswahili:",
}

VQA_PROMPTS = {
    "en": "Question: {question} Answer:",
    "de": "Frage: {question} Antwort:",
    "fr": "Question : {question} Réponse :",
    "es": "Pregunta: {question} Respuesta:",
    "ru": "Вопрос: {question} Ответ:",
    "hi": "प्रश्न: {question} उत्तर:",
    "si": "ප්‍රශ්නය: {question} පිළිතුර:",
    "zh": "问题：{question} 回答：",
    "ja": "質問：{question} 答え：",
    "ar": "سؤال: {question} جواب:",
    "sw": "Swali: {question} Jibu:",
}


def caption_prompt(lang: str, instruction: str = "target") -> str:
    """The captioning instruction for `lang`: written in `lang` ("target"), or in English naming it ("en",
    Centurio's style; also the fallback for a language without a template)."""
    if instruction == "target" and lang in CAPTION_PROMPTS:
        return CAPTION_PROMPTS[lang]
    return f"Caption in {get_language(lang).name}:"


def vqa_prompt(question: str, lang: str, instruction: str = "target") -> str:
    """A question whose answer is wanted in `lang` (xGQA asks German questions for English answers)."""
    if instruction == "target" and lang in VQA_PROMPTS:
        template = VQA_PROMPTS[lang]
    else:
        template = VQA_PROMPTS["en"] if lang == "en" else "Question: {question} Answer in " + get_language(lang).name + ":"
    return template.format(question=question)
