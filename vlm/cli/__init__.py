"""The `vlm` command: demo, prep, train, plan, eval, export, caption, ask.

The CLI is the one place that composes the three packages (`vlm`, `eval`, `data_prep`). The arguments of every
subcommand are in parser.py; each command runs from its own module (`run(args)`), imported only when it is the
one asked for, so `vlm --help` and a bad argument answer without loading torch. Config problems (unknown key,
wrong type, impossible value, missing file) and bad inputs exit with code 2 and one line naming the culprit,
before any model is built.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

from data_prep.images import BadImage
from vlm.cli.parser import build_parser
from vlm.config import ConfigError

# subcommand -> the module of vlm/cli that runs it
COMMANDS = {"demo": "demo", "prep": "prep", "train": "train", "plan": "plan", "eval": "evaluate",
            "export": "export", "caption": "generate", "ask": "generate"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options (`vlm eval RUN --out X eval.max_images=8`).
    if extra:
        if any(item.startswith("-") or "=" not in item for item in extra) or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    # Our packages log INFO on rank 0; the root logger stays at WARNING, since open_clip logs its INFO chatter
    # through it directly (a package logger's records are filtered by its own level, not the root's).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for package in ("vlm", "eval", "data_prep"):
        logging.getLogger(package).setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    # peft calls a transformers property that transformers 5 deprecates; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        return importlib.import_module(f"vlm.cli.{COMMANDS[args.command]}").run(args)
    except (ConfigError, BadImage, FileNotFoundError, FileExistsError) as err:
        print(f"vlm {args.command}: error: {err}", file=sys.stderr)
        return 2
