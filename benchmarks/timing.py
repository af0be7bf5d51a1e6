"""The one timing path of the benchmark harnesses (benchmarks/*.py,
bindings/python/bench_vs_tool.py and bench_cpu.py): warm-up, then the
median of timed calls, each bracketed by CUDA events on a GPU and by
perf_counter on the CPU.

On a GPU a timed call that starts on an idle GPU also times the host's
enqueue of it, which costs PyTorch's cuDNN path far more than a C++ call;
queued behind a busy-wait (QueueAhead), the call's events time only the
GPU's work. tools/flashattn-bench does the same in C++ with a host function
on its stream.
"""
import statistics
import time
from typing import NamedTuple

import torch

_cycles_per_ms = None


def _calibrate():
    """The busy-wait kernel's cycles per millisecond, measured once per
    process (clocks differ between GPUs and with load)."""
    global _cycles_per_ms
    if _cycles_per_ms is None:
        probe = 1_000_000
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(probe)  # first launch
        a.record()
        torch.cuda._sleep(probe)
        b.record()
        b.synchronize()
        _cycles_per_ms = probe / max(a.elapsed_time(b), 1e-3)
    return _cycles_per_ms


class QueueAhead:
    """hold() puts about `ms` milliseconds of busy-wait on the current CUDA
    stream, so that what the host enqueues next waits for the GPU instead of
    the GPU for the host; done() after the last enqueue says whether the host
    was done before the wait ran out (short counts the calls that were
    not, whose times then include host time). A no-op off CUDA."""

    def __init__(self, device, ms):
        self.ms, self.cycles, self.short = ms, 0, 0
        if device.type != "cuda" or ms <= 0 or not hasattr(torch.cuda, "_sleep"):
            self.ms = 0
            return
        self.cycles = int(_calibrate() * ms)

    def reset(self):
        self.short = 0

    def hold(self):
        self.start = time.perf_counter()
        if self.cycles:
            torch.cuda._sleep(self.cycles)

    def done(self):
        if self.cycles and (time.perf_counter() - self.start) * 1e3 > 0.9 * self.ms:
            self.short += 1


def stopwatch(device):
    """stamp() marks a point in the device's work; seconds(a, b) is the time
    between two marks (CUDA events on a GPU, perf_counter on the CPU)."""
    if device.type == "cuda":
        def stamp():
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e

        def seconds(a, b):
            b.synchronize()
            return a.elapsed_time(b) / 1e3
    else:
        stamp = time.perf_counter

        def seconds(a, b):
            return b - a
    return stamp, seconds


# At least this much warm-up too, unless a caller passes warm_seconds: a few
# calls of a short problem do not bring an idle GPU's clocks back up (e.g.
# after a compile).
WARM_SECONDS = 0.2


def sample(step, warmup, repeats, max_seconds, timed=lambda: None, warm_seconds=None):
    """`warmup` untimed calls of step() (and at least warm_seconds of them,
    default WARM_SECONDS), then up to `repeats` timed ones; step() returns
    a tuple of seconds, and the result is the median of each component (and
    the number of samples). timed() runs once between the two loops. With
    max_seconds > 0 each of the two loops stops once that much wall time
    went into it (after one warm-up call and three samples at least): at
    64K tokens one forward + backward takes seconds, and a sweep must fit
    one GPU call."""
    warm_seconds = WARM_SECONDS if warm_seconds is None else warm_seconds
    start, calls = time.perf_counter(), 0
    while warmup > 0 and (calls < warmup or time.perf_counter() - start < warm_seconds):
        step()
        calls += 1
        if max_seconds > 0 and time.perf_counter() - start > max_seconds:
            break
    samples, start = [], time.perf_counter()
    timed()
    while len(samples) < repeats:
        samples.append(step())
        if max_seconds > 0 and len(samples) >= min(3, repeats) and time.perf_counter() - start > max_seconds:
            break
    return [statistics.median(column) for column in zip(*samples)], len(samples)


class Timed(NamedTuple):
    seconds: float  # the median
    samples: int    # timed calls
    short: int      # timed calls whose enqueue outlasted the busy-wait (their times hold host time)


def time_call(fn, device, warmup=3, repeats=20, max_seconds=0.0, queue_ahead_ms=2.0, warm_seconds=None):
    """Median seconds of fn() on `device` (a torch.device), one call a
    sample: sample()'s warm-up and loop, each timed call queued behind a
    queue_ahead_ms busy-wait on a GPU (QueueAhead) and bracketed by
    stopwatch() marks."""
    stamp, seconds = stopwatch(device)
    queue = QueueAhead(device, queue_ahead_ms)

    def step():
        queue.hold()
        t0 = stamp()
        fn()
        t1 = stamp()
        queue.done()
        return (seconds(t0, t1),)
    (t,), n = sample(step, warmup, repeats, max_seconds, queue.reset, warm_seconds)
    return Timed(t, n, queue.short)


def kernel_times(fn, calls=10, warmup=3, name_chars=80):
    """The kernels of fn() on the GPU, from torch.profiler: for each kernel
    name (first name_chars characters) its launches per call and median GPU
    time, and the span of the `calls` calls on the GPU (first kernel start
    to last kernel end; the span minus the kernels is launch gaps), in
    microseconds. For diagnoses (benchmarks/decode_profile.py,
    sparse_profile.py), not timings."""
    from torch.profiler import profile, ProfilerActivity
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    by_name = {}
    for e in events:
        by_name.setdefault(e.name[:name_chars], []).append(e.device_time)
    kernels = {name: {"count": len(t) / calls, "median_us": round(statistics.median(t), 2)}
               for name, t in by_name.items()}
    span = max(e.time_range.end for e in events) - min(e.time_range.start for e in events) if events else None
    return kernels, span
