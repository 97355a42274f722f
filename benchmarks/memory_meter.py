"""Peak memory per phase of a benchmark run: the CUDA caching allocator's counters, or peak RSS on CPU.

Used by benchmarks/step_memory_speed.py and prefill_memory.py, on the trainer's own readings
(cordlite.train.meter): on Linux the CPU peak (VmHWM) is reset by writing "5" to /proc/self/clear_refs,
so each phase reports its own peak; elsewhere it covers the whole process.
"""

from __future__ import annotations

import torch

from cordlite.train.meter import proc_status_kb, reset_peak_memory

GB = 1e9


class Memory:
    """Peak memory per phase: the CUDA caching allocator's counters, or peak RSS (VmHWM) on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.peaks: dict[str, dict[str, float]] = {}

    def current(self) -> dict[str, float]:
        if self.cuda:
            return {"allocated_gb": torch.cuda.memory_allocated(self.device) / GB,
                    "reserved_gb": torch.cuda.memory_reserved(self.device) / GB}
        return {"rss_gb": proc_status_kb("VmRSS") * 1024 / GB}

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        reset_peak_memory(self.device)

    def record(self, phase: str) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            now = {"allocated_gb": torch.cuda.max_memory_allocated(self.device) / GB,
                   "reserved_gb": torch.cuda.max_memory_reserved(self.device) / GB}
        else:
            now = {"rss_gb": proc_status_kb("VmHWM") * 1024 / GB}
        old = self.peaks.get(phase, {})
        self.peaks[phase] = {k: max(v, old.get(k, 0.0)) for k, v in now.items()}
