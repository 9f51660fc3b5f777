"""Run under torchrun by test_distributed.py: train through the normal trainer, then check that every
rank ends with the same trainable weights and write what was found for the test to read."""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from vlm.config import load_config
from vlm.train.trainer import train


def main() -> None:
    config, result_path, *overrides = sys.argv[1:]
    result = train(load_config(config, overrides))
    state = {k: v.detach().float() for k, v in result.objective.named_parameters() if v.requires_grad}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    if dist.get_rank() == 0:
        max_diff = max((gathered[0][k] - other[k]).abs().max().item() for other in gathered[1:] for k in state)
        json.dump({"world_size": dist.get_world_size(), "max_diff": max_diff, "steps": result.steps,
                   "n_tensors": len(state)}, open(result_path, "w"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
