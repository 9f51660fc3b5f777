#!/usr/bin/env bash
# Multi-node training without a scheduler: run this script on every node with the same environment; torchrun
# starts NPROC_PER_NODE ranks per node and the nodes meet through its c10d rendezvous, whose store the torchrun on
# MASTER_ADDR serves (any one of the nodes, reachable from the others at MASTER_PORT). The script works from the
# repository root, so CONFIG and the config's relative paths are relative to it; train.output_dir must be on a
# filesystem every node shares (every rank writes its shard of the checkpoints).
#
#   # on each of 4 nodes, node-0 being one of them:
#   NNODES=4 MASTER_ADDR=node-0 CONFIG=configs/mt0-xl-qformer.yaml scripts/torchrun_multinode.sh train.lr=3e-4
#
# Arguments are dotted config overrides. Environment:
#   NNODES          nodes in the job (1)
#   NPROC_PER_NODE  ranks per node, one per GPU (8)
#   MASTER_ADDR     the rendezvous node's address (required)
#   MASTER_PORT     its port (29500)
#   RDZV_ID         the job's name in the rendezvous, the same on every node (vlm-train)
#   CONFIG          the config (configs/bloomz-qformer.yaml)
#   VENV            the venv to activate (.venv; empty: the python already on PATH)
# NODE_RANK is not needed: the c10d rendezvous numbers the nodes itself as they join (torchrun ignores
# --node_rank with it), and the trainer keys its checkpoint state by global rank, not by host.
#
# Every run passes --resume: it continues from train.output_dir's latest checkpoint, or starts from scratch where
# there is none, so after a crash or a kill the same command on every node resumes from the last checkpoint
# (written every train.save_every steps). torchrun replaces this script (exec), so a SIGTERM to it stops the ranks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NNODES=${NNODES:-1}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to the address of the node that serves the rendezvous}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-vlm-train}
CONFIG=${CONFIG:-configs/bloomz-qformer.yaml}
VENV=${VENV-.venv}

if [[ -n $VENV ]]; then
    source "$VENV/bin/activate"
fi
# A rank's CPU work runs in its data.num_workers loader processes, one thread each; more OpenMP threads in the
# ranks would only compete with them (torchrun sets 1 too, with a warning). NCCL picks its own transport; set
# NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME only where the default interface cannot reach the other nodes.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

cmd=(python -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" --rdzv_id="$RDZV_ID"
     --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" -m vlm.cli train "$CONFIG" "$@" --resume)
echo "+ ${cmd[*]}"
exec "${cmd[@]}"
