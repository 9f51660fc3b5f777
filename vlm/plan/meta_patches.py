"""The few places where the training step's code reads data values, which meta tensors do not have, and what the
planner's trace does there instead (`meta_compatible`). Everything else in the step runs as the trainer runs it.

- transformers' masking utils check whether a padding mask is all ones (`.item()`) to skip building the 4D mask;
  they skip that check for FakeTensors and do it for meta tensors too here, so the mask is built (as it is for
  any padded batch).
- `torch.autocast(device, enabled=False)` (the MoE router's fp32 region) refuses the meta device: it suspends the
  planner's autocast emulation instead.
- the objective trims the Q-Former text to the widest caption with `int(...)`: the synthetic captions fill
  bridge.max_text_length, so nothing is trimmed.
- ITG selects the positions whose next token is real with a boolean mask: every position is real here.
- ITM draws hard negatives with `torch.multinomial` and keeps the rows that have one with boolean masks: with
  distinct images every row has one, so the multimodal pass runs on the 3B pairs BLIP-2 builds (B positives,
  B texts with a negative image, B images with a negative text); which images are drawn does not change memory or
  FLOPs, and the sampling itself (no grad, B x B) is left out.
- the LM loss selects its labelled positions with a boolean mask (vlm/model/lm_loss.py): the synthetic batch labels
  exactly the target tokens, the last `target_tokens` positions (causal) or every decoder position (seq2seq).
- the MoE's per-language routing statistics are host-side CPU copies (B x experts), left out.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import transformers.masking_utils

from vlm.model import lm_loss
from vlm.objective import objective as objective_module
from vlm.objective.objective import Objective
from vlm.plan.inputs import Workload
from vlm.plan.target_ops import TargetOps


@contextlib.contextmanager
def meta_compatible(objective: Objective, ops: TargetOps, workload: Workload) -> Iterator[None]:
    """Within this context `objective` runs a training step on meta tensors (see the module docstring)."""
    is_tracing = transformers.masking_utils.is_tracing
    real_autocast = torch.autocast

    def autocast(device_type: str, *args, **kwargs):
        if device_type != "meta":
            return real_autocast(device_type, *args, **kwargs)
        enabled = kwargs.get("enabled", args[1] if len(args) > 1 else True)
        return contextlib.nullcontext() if enabled else ops.suspended()

    module_patches = [
        (transformers.masking_utils, "is_tracing", lambda tensor=None: is_tracing(tensor) or _is_meta(tensor)),
        (torch, "autocast", autocast),
        (objective_module, "_trim_bridge_text", lambda ids, mask: (ids, mask)),
        (objective_module, "itg_loss", _itg_loss_every_position),
        (lm_loss, "labelled_rows", functools.partial(_target_rows, target_tokens=workload.target_tokens)),
    ]
    instance_patches = {"_itm_loss": types.MethodType(_itm_loss_all_negatives, objective), "routing": _NoRouting()}
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in module_patches]
    saved = {name: objective.__dict__.get(name) for name in instance_patches}
    try:
        for owner, name, value in module_patches:
            setattr(owner, name, value)
        objective.__dict__.update(instance_patches)
        yield
    finally:
        for owner, name, value in originals:
            setattr(owner, name, value)
        for name, value in saved.items():
            if value is None:
                del objective.__dict__[name]
            else:
                objective.__dict__[name] = value


def _is_meta(tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.is_meta


def _target_rows(hidden: torch.Tensor, labels: torch.Tensor, shift: bool,
                 target_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vlm.model.lm_loss.labelled_rows on the synthetic batch, whose labels are the last `target_tokens` tokens."""
    if shift:
        hidden, labels = hidden[:, -target_tokens - 1: -1], labels[:, -target_tokens:]
    samples = torch.arange(labels.shape[0], device=labels.device).repeat_interleave(labels.shape[1])
    return hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1), samples


def _itg_loss_every_position(logits: torch.Tensor, target_ids: torch.Tensor, target_mask: torch.Tensor,
                             label_smoothing: float = 0.1, sample_weights=None) -> torch.Tensor:
    """vlm.objective.losses.itg_loss when every next token is real: the same (N, V) copy, upcast, and loss."""
    kept = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(kept, target_ids[:, 1:].reshape(-1).long(), label_smoothing=label_smoothing)


def _itm_loss_all_negatives(self: Objective, image_tokens, ids, mask, image_ids, itc,
                            example_weights=None) -> torch.Tensor:
    """Objective._itm_loss when every row has a negative (see the module docstring)."""
    bridge, b = self.model.bridge, ids.shape[0]
    image_for_text = torch.randint(0, b, (b,), device=ids.device)
    text_for_image = torch.randint(0, b, (b,), device=ids.device)
    pair_tokens = torch.cat([image_tokens, image_tokens[image_for_text], image_tokens])
    pair_ids = torch.cat([ids, ids, ids[text_for_image]])
    pair_mask = torch.cat([mask, mask, mask[text_for_image]])
    labels = torch.zeros(3 * b, dtype=torch.long, device=ids.device)
    logits = bridge.itm_logits(bridge.encode_multimodal(pair_tokens, pair_ids, pair_mask))
    return F.cross_entropy(logits.float(), labels)


class _NoRouting:
    def add(self, langs, probs) -> None:
        pass
