"""Test-session settings. Under pytest-xdist (the README's test command runs two workers on the CI machine's two
cores) every worker, and every subprocess a test starts (the `hf-distill` command, torchrun), computes on one thread:
two workers with two intra-op threads each would oversubscribe the cores and slow both down."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

    import torch

    torch.set_num_threads(1)
