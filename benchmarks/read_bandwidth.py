"""The machine's read bandwidth, measured beside the engines: the ceiling a decode step that
streams its weights from memory is held against. Import after fixing OPENBLAS_NUM_THREADS."""

import statistics
import time

import numpy as np


def probe_matrix() -> np.ndarray:
    """1 GiB of float32, far beyond any cache."""
    return np.ones((256 * 1024, 1024), np.float32)


def read_bandwidth(a: np.ndarray, repeats: int = 3) -> float:
    """GB/s of OpenBLAS sgemv over ``a`` (it reads every byte once; OPENBLAS_NUM_THREADS
    threads): the median of a few passes after a warm-up."""
    v = np.ones(a.shape[1], np.float32)
    a @ v
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ v
        rates.append(a.nbytes / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)
