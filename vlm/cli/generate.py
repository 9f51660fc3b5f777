"""`vlm caption RELEASE IMAGE...` and `vlm ask RELEASE IMAGE... QUESTION`: one batch, prompts from the templates
the model was trained with; one line per image ("path<TAB>output" when there are several)."""

from __future__ import annotations

from vlm.config import ConfigError


def run(args) -> int:
    import torch

    from data_prep.images import decode_image
    from data_prep.languages import get_language
    from vlm.release import from_pretrained

    try:
        get_language(args.lang)
    except ValueError as err:
        raise ConfigError(f"--lang: {err}") from None
    pictures = [decode_image(path) for path in args.images]  # every image is read before the model loads
    model = from_pretrained(args.model)
    batch = torch.stack([model.vision.preprocess(p) for p in pictures])
    questions = [args.question] * len(pictures) if args.command == "ask" else None
    outputs = model.generate(batch, questions, lang=args.lang, max_new_tokens=args.max_new_tokens)
    for path, text in zip(args.images, outputs):
        print(text if len(args.images) == 1 else f"{path}\t{text}")
    return 0
