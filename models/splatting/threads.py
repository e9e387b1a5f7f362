"""Thread count of the compiled (numba) kernels."""

from __future__ import annotations

from contextlib import contextmanager

import numba
import torch

SMALL_WORK = 16384  # below this many items a parallel region costs more than it saves


@contextmanager
def kernel_threads(work: int):
    """Run numba's parallel loops with torch's thread count (the CLI's --threads) and one thread for small
    inputs: waking the pool for a tiny scene took tens of ms on a busy 2-core machine, the work itself < 1 ms."""
    n = 1 if work < SMALL_WORK else max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)
