"""Test-session settings.

The suite's tensors are small: with torch's default of one OpenMP thread per core, tiny
matmuls spend their time waking threads, and on a busy 2-core machine a step runs 5x slower
than on one thread. Benchmarks (not tests) measure multi-threaded speed.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses the tests start

import torch  # noqa: E402

torch.set_num_threads(1)


import mlflow  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _tracking_uri_per_test():
    """``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI``: without this, a run made in
    the test process sends every later subprocess's runs to that test's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(before)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
