"""Timing a repeated step the same way in every benchmark: warm-up, then one synchronised timing per repeat."""

import time
from collections.abc import Callable


def time_steps(step: Callable[[], object], warmup: int, repeats: int, synchronize: Callable[[], object]) -> list[float]:
    """Seconds of each of `repeats` calls of `step` after `warmup` calls, the device synchronised around each."""
    for _ in range(warmup):
        step()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    return times
