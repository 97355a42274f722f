"""Data-parallel CORD across processes, launched by accelerate (or torchrun).

    accelerate launch --multi_gpu --num_processes 8 -m cordlite train RECIPE
    cordlite train RECIPE --num-processes 2          # the same, launched for you

accelerate is the launcher: it starts one process per GPU (or per CPU slot) with RANK,
WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT set, on one machine or several. Each process loads
its own 4-bit base + LoRA, takes its shard of every step's global batch, rolls out, scores and
back-propagates it, and then the LoRA gradients are summed across processes (one all-reduce of a
flat buffer: the adapters are small). Every process then takes the same optimizer step, so the
replicas never drift. Only rank 0 writes metrics, checkpoints and the progress bar.

cordlite does not wrap the model in DistributedDataParallel: the collection phase calls
generate() and switches adapters off, and DDP's forward hooks fit neither. Summing gradients
after backward gives the same update with none of that. FSDP and DeepSpeed are not supported;
with a 4-bit base each GPU holds the whole model (about 7.3 GB for Qwen2-Audio-7B).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import torch


class CollectiveDeviceError(RuntimeError):
    """A tensor handed to a collective on another device than the process group's (NCCL takes CUDA
    tensors of this process's GPU only; gloo CPU tensors only)."""


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    """Where this process's collectives run: cuda:LOCAL_RANK under NCCL, cpu under gloo."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def _all_reduce(self, t: torch.Tensor, op) -> None:
        """Every tensor collective of cordlite goes through here: refused unless on this process's device."""
        if t.device != self.device:
            raise CollectiveDeviceError(f"a {t.device} tensor handed to all_reduce; this process's collectives run on "
                                        f"{self.device}")
        torch.distributed.all_reduce(t, op=op)

    def barrier(self) -> None:
        if self.enabled:
            if self.device.type == "cuda":  # NCCL: on this process's GPU, not on a guess of it
                torch.distributed.barrier(device_ids=[self.device.index])
            else:
                torch.distributed.barrier()

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum each parameter's gradient over ranks (each rank's loss already carries its 1/B share)."""
        if not self.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        self._all_reduce(flat, torch.distributed.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def gather(self, obj):
        """Every rank's `obj`, in rank order (a list of one on a single process). Pickled objects: NCCL
        moves them through the current CUDA device, which init_distributed set to this process's."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on some rank (agreeing on a stop)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self._all_reduce(t, torch.distributed.ReduceOp.MAX)
        return bool(t.item())


_UNSUPPORTED = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
                "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def init_distributed(cuda: bool | None = None) -> Dist:
    """Join the process group the launcher set up; a plain single process when there is none.
    `cuda` (default: whether torch sees a GPU): NCCL on cuda:LOCAL_RANK, else gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for var, name in _UNSUPPORTED.items():
        if os.environ.get(var, "").lower() == "true":
            raise RuntimeError(f"{name} was requested through accelerate, but cordlite trains data-parallel only "
                               "(each GPU holds the 4-bit base). Launch with a multi-GPU config without "
                               f"{name}, e.g. accelerate launch --multi_gpu --num_processes N -m cordlite train RECIPE")
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() if cuda is None else cuda
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend="nccl", device_id=device)
        else:
            torch.distributed.init_process_group(backend="gloo")
    return Dist(rank, world, local_rank, device)


def launch(num_processes: int, argv: list[str]) -> int:
    """Re-run `cordlite <argv>` under `accelerate launch` with `num_processes` processes."""
    if shutil.which("accelerate") is None:
        accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    else:
        accelerate = ["accelerate", "launch"]
    # --multi_gpu selects accelerate's torchrun launcher, which also runs CPU processes (gloo).
    cmd = [*accelerate, "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cordlite", *argv]
    return subprocess.call(cmd)
