"""Which rank a distributed run lost, in one line, when a collective fails.

A dead peer makes gloo's next collective fail at once ("Connection reset by peer"); a hung one makes it time out
after `train.dist_timeout_s` (the process group's timeout, NCCL's watchdog too). Neither error says which rank is
gone. So each rank that fails leaves a report in the rendezvous store (hosted by torchrun's agent, which outlives
its workers), numbered by an atomic counter: a rank whose own error is not a communication error reports and
re-raises it at once (it is the root cause, its traceback is the one to read); a rank that lost contact waits
briefly for the others' reports, then names the ranks that never reported (dead or hung) or the one that failed
first.
"""

from __future__ import annotations

import time

import torch.distributed as dist

from vlm import distributed
from vlm.config import first_line

REPORT_WAIT_S = 5.0  # how long a rank that lost contact waits for the others' reports
_COUNTER, _REPORT = "vlm/failures", "vlm/failed/{}"


class LostRank(RuntimeError):
    """A rank stopped because another rank died, hung or failed first; the message names it."""


def is_communication_error(err: BaseException) -> bool:
    # gloo raises plain RuntimeErrors whose message starts with its source path; NCCL and the store raise DistErrors.
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and "gloo" in str(err))


def explain_failure(err: BaseException, step: int, wait_s: float = REPORT_WAIT_S) -> LostRank | None:
    """On a distributed rank that failed with `err` at `step`: the LostRank to raise instead, or None when `err`
    is this rank's own (or the store cannot be reached) and should propagate as it is."""
    store = dist.distributed_c10d._get_default_store()  # the process group's own store: no public accessor
    me, world = distributed.rank(), distributed.world_size()
    try:
        order = store.add(_COUNTER, 1)
        store.set(_REPORT.format(me), f"{order} {step} {int(is_communication_error(err))}")
        if not is_communication_error(err):
            return None
        reports = _reports(store, [r for r in range(world) if r != me], time.monotonic() + wait_s)
    except Exception:  # noqa: BLE001 - the store went with the failure: nothing better to say than err itself
        return None
    silent = [r for r in range(world) if r != me and r not in reports]
    if silent:
        return LostRank(f"{_ranks(silent)} stopped responding at step {step + 1} (dead or hung: no report within "
                        f"{wait_s:.0f} s); rank {me} stops ({first_line(err)})")
    first = min(reports, key=lambda r: reports[r][0])
    first_order, first_step, lost_contact = reports[first]
    if first_order < order and not lost_contact:
        return LostRank(f"rank {first} failed first, at step {first_step + 1} (its error is in its log); "
                        f"rank {me} stops")
    return LostRank(f"rank {me} lost contact with the other ranks at step {step + 1} ({first_line(err)})")


def _reports(store, ranks: list[int], deadline: float) -> dict[int, tuple[int, int, int]]:
    reports: dict[int, tuple[int, int, int]] = {}
    while True:
        for r in ranks:
            key = _REPORT.format(r)
            if r not in reports and store.check([key]):
                order, step, lost_contact = (int(v) for v in store.get(key).decode().split())
                reports[r] = (order, step, lost_contact)
        if len(reports) == len(ranks) or time.monotonic() > deadline:
            return reports
        time.sleep(0.1)


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
