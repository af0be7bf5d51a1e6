"""benchmarks/timing.py, the one timing path of the harnesses, on the CPU
(perf_counter marks; the busy-wait is a no-op off CUDA)."""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import pytest  # noqa: E402

torch = pytest.importorskip("torch")

import timing  # noqa: E402


def sleeper(durations):
    """fn() sleeps the next of `durations` seconds (the last one repeats)
    and counts its calls."""
    calls = []

    def fn():
        time.sleep(durations[min(len(calls), len(durations) - 1)])
        calls.append(1)
    return fn, calls


def test_warmup_then_median_of_the_timed_calls():
    # Three untimed calls that would dominate a mean, then five timed ones
    # whose median is the third-longest: 20 ms.
    fn, calls = sleeper([0.3, 0.3, 0.3, 0.001, 0.08, 0.02, 0.002, 0.09])
    t = timing.time_call(fn, torch.device("cpu"), warmup=3, repeats=5, warm_seconds=0)
    assert len(calls) == 8 and t.samples == 5 and t.short == 0
    assert 0.02 <= t.seconds < 0.06, t


def test_warm_seconds_extends_the_warmup():
    fn, calls = sleeper([0.01])
    timing.time_call(fn, torch.device("cpu"), warmup=1, repeats=2, warm_seconds=0.1)
    assert len(calls) >= 2 + 10  # 1 call would do; 0.1 s of 10 ms calls is 10


def test_max_seconds_stops_a_loop_after_three_samples():
    fn, calls = sleeper([0.03])
    t = timing.time_call(fn, torch.device("cpu"), warmup=1, repeats=100, max_seconds=0.05, warm_seconds=0)
    assert t.samples == 3 and len(calls) == 4


def test_no_warmup_times_the_first_call():
    fn, calls = sleeper([0.03, 0.001])
    t = timing.time_call(fn, torch.device("cpu"), warmup=0, repeats=1)
    assert len(calls) == 1 and t.samples == 1 and t.seconds >= 0.03


def test_sample_takes_the_median_of_each_component():
    steps = iter([(1.0, 10.0), (3.0, 30.0), (2.0, 20.0)])
    seen = []
    medians, n = timing.sample(lambda: next(steps), warmup=0, repeats=3, max_seconds=0,
                               timed=lambda: seen.append("timed"))
    assert medians == [2.0, 20.0] and n == 3 and seen == ["timed"]
