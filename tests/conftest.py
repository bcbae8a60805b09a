"""Shared test set-up: one torch thread (tiny tensors; avoids OpenMP contention with env workers)."""

from __future__ import annotations

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
