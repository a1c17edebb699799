"""What computed a benchmark cell, in one line for its results row: the device and its threads.

``cpu: AMD EPYC 7B13, 1 torch thread of 2 cores`` or ``gpu: NVIDIA H100 80GB HBM3``. A cell's
wall time means little without it: the results files keep it beside each cell.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def cpu_model() -> str:
    """The processor's marketing name (Linux reports it in ``cpuinfo``), else the platform's word."""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown cpu"


def hardware(accelerator: str = "cpu") -> str:
    """The device a suite's networks run on (``accelerator`` is Lightning's flag), in one line."""
    if accelerator != "cpu" and torch.cuda.is_available():
        return f"gpu: {torch.cuda.get_device_name(0)}"
    threads = torch.get_num_threads()
    return (f"cpu: {cpu_model()}, {threads} torch thread{'s' if threads > 1 else ''} "
            f"of {os.cpu_count()} cores")
