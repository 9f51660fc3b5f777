"""The machine a plan is for (`Target`), checked before anything is built; imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from vlm.config import ConfigError

GIB = 2**30
PLAN_STRATEGIES = ("single", "ddp", "fsdp2")
TARGET_DEVICES = ("cuda", "cpu")
# Memory no tensor holds: the CUDA context, cuBLAS workspaces and NCCL buffers, then what the caching allocator
# reserves beyond its allocated peak (fragmentation). A plan fits what is left of the GPU.
CUDA_RESERVED_GIB = 1.0
ALLOCATOR_SLACK = 0.05


@dataclass(frozen=True)
class Target:
    """GPUs of `gpu_mem_gib` each; `global_batch` None: the config's batch_size x grad_accum x gpus. device "cpu"
    plans a CPU run (fp32, host memory), as the planner's own accuracy check does."""

    gpus: int = 8
    gpu_mem_gib: float = 80.0
    device: str = "cuda"
    global_batch: int | None = None
    strategies: tuple[str, ...] = PLAN_STRATEGIES

    def check(self) -> None:
        """Bad values fail here, in one line naming the option."""
        if self.gpus < 1:
            raise ConfigError(f"--gpus must be >= 1, got {self.gpus}")
        if not self.gpu_mem_gib > 0:
            raise ConfigError(f"--gpu-mem must be > 0 (GiB), got {self.gpu_mem_gib:g}")
        if self.global_batch is not None and self.global_batch < 1:
            raise ConfigError(f"--global-batch must be >= 1, got {self.global_batch}")
        if self.device not in TARGET_DEVICES:
            raise ConfigError(f"--device is '{self.device}'; choose one of: {', '.join(TARGET_DEVICES)}")
        if not self.strategies:
            raise ConfigError(f"--strategies is empty; choose from: {', '.join(PLAN_STRATEGIES)}")
        for name in self.strategies:
            if name not in PLAN_STRATEGIES:
                raise ConfigError(f"--strategies: unknown strategy '{name}'; choose from: {', '.join(PLAN_STRATEGIES)}")

    def gpus_of(self, strategy: str) -> int:
        return 1 if strategy == "single" else self.gpus

    @property
    def reserved_gib(self) -> float:
        return CUDA_RESERVED_GIB if self.device == "cuda" else 0.0

    @property
    def usable_bytes(self) -> int:
        return int((self.gpu_mem_gib - self.reserved_gib) * (1 - ALLOCATOR_SLACK) * GIB)
