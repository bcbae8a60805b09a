"""Shared test set-up: one torch thread (tiny tensors; avoids OpenMP contention with env workers)."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)


#: Modules whose tests share a module- or session-scoped fixture: under pytest-xdist
#: (``--dist loadgroup``, set in pyproject.toml) each runs whole on one worker, so the fixture
#: is built once. Tests marked ``ray`` also share one worker: one Ray instance at a time. Tests
#: that build the ML10 or ML45 benchmark share one worker too (group ``mw-benchmarks``): a
#: benchmark's build (ML10 about 10 s, ML45 about 30 s) is cached per process (envs.meta_world),
#: so one worker pays it once instead of both.
SHARED_FIXTURE_MODULES = ("test_hostile", "test_plan_status", "test_compare_cmd", "test_aggregate", "test_metaworld_fast")
MW_BENCHMARK_MODULES = ("test_metaworld_reward", "test_envs_metaworld")  # most of their tests build ML10 or ML45
MW_BENCHMARK_GROUP = "mw-benchmarks"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif item.module.__name__.rpartition(".")[2] in SHARED_FIXTURE_MODULES:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
        elif "ML45" in item.name or "ML10" in item.name or item.module.__name__.rpartition(".")[2] in MW_BENCHMARK_MODULES:
            item.add_marker(pytest.mark.xdist_group(MW_BENCHMARK_GROUP))
