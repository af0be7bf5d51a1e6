"""Timing GPU work rather than the host's launch of it, for the benchmark
harnesses (benchmarks/attention_bench.py, bindings/python/bench_vs_tool.py;
tools/flashattn-bench does the same in C++ with a host function on its
stream). A timed call that starts on an idle GPU also times the host's
enqueue of it, which costs PyTorch's cuDNN path far more than a C++ call;
queued behind a busy-wait, the call's events time only the GPU's work.
"""
import statistics
import time

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
