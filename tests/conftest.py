"""Test-session settings.

The suite's tensors are small: with torch's default of one OpenMP thread per core, tiny
matmuls spend their time waking threads, and on a busy 2-core machine a step runs 5x slower
than on one thread. Benchmarks (not tests) measure multi-threaded speed.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses the tests start

import torch  # noqa: E402

torch.set_num_threads(1)
