"""How the training benchmark measures: peak memory of one run, step timing,
and model FLOPs.

Peak memory on CUDA is ``torch.cuda.max_memory_allocated`` over the run (the
peak statistics reset first, the previous run's memory freed). On a CPU there is
no allocator statistic to reset: a thread samples the process's resident set
every 20 ms and the peak's growth over the resident set at the run's start is
reported, after handing memory freed by earlier runs back to the system. Our
worker's runs also read the peak of each step (``PeakMemory.next_step``, which
on a CPU hands back what the step freed), so that a step can be compared with
a baseline step of as many tokens.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from types import TracebackType

import psutil
import torch

GIB = 1024**3


def sync(device: str) -> None:
    """Waits for queued GPU work, so that a clock read after it is the work's end."""
    if device == "cuda":
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    """Drops what the previous run left, so the next run starts clean.

    On a CPU, glibc's allocator keeps freed memory for reuse, and a later run
    would reuse it without growing the resident set: ``malloc_trim`` hands it
    back to the system first.
    """
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    else:
        _trim()


def _trim() -> None:
    """Hands memory glibc keeps for reuse back to the system (a CPU's resident set)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the growth may read low after an earlier run


class PeakMemory:
    """Context manager: ``gib`` is the run's peak memory growth in GiB once it exits."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.gib: float | None = None
        self._start = 0
        self._peak = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        free_memory(self.device)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            process = psutil.Process()
            self._start = self._peak = process.memory_info().rss
            self._thread = threading.Thread(target=self._sample, args=(process,), daemon=True)
            self._thread.start()
        return self

    def snapshot(self) -> float:
        """The peak growth so far, in GiB (while the run goes on)."""
        if self.device == "cuda":
            return (torch.cuda.max_memory_allocated() - self._start) / GIB
        return (self._peak - self._start) / GIB

    def next_step(self) -> float:
        """The peak growth since the start or the previous call, in GiB; the peak
        then starts again from what is allocated now (one step's peak a call).

        On a CPU the memory a larger step freed is handed back first: kept by
        glibc, it would count in the resident set of every later step.
        """
        peak = self.snapshot()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            _trim()
            self._peak = psutil.Process().memory_info().rss
        return peak

    def _sample(self, process: psutil.Process) -> None:
        while not self._done.wait(0.02):
            self._peak = max(self._peak, process.memory_info().rss)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.device != "cuda":
            self._done.set()
            if self._thread is not None:
                self._thread.join()
        self.gib = self.snapshot()


def flops_per_token(parameters: int, layers: int, heads: int, head_dim: int, seq_len: int) -> int:
    """nanoGPT's training FLOPs a token: 6N for the weights (forward and backward)
    plus 12·L·H·Q·T for attention over a context of ``seq_len``."""
    return 6 * parameters + 12 * layers * heads * head_dim * seq_len


class Clock:
    """Wall-clock marks taken after the device's queued work has finished."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.marks: list[float] = []

    def mark(self) -> None:
        sync(self.device)
        self.marks.append(time.perf_counter())
