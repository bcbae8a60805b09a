"""rlbench.pairing: the run.json record that proves two runs of a seed share initial policy and test tasks."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from rlbench import pairing, presets, store
from rlbench.evaluator import test_tasks as eval_test_tasks
from rlbench.runner import train

ENV = "rlbench/PointGoal-v0"
SMALL = {"sampler": {"meta_batch_size": 5, "episodes_per_task": 4, "n_workers": 1}, "n_checkpoints": 3,
         "eval": {"n_tasks": 3, "n_updates": 2, "episodes_per_task": 3}}


def cfg(algo: str, seed: int, **extra):
    return presets.run_config(ENV, algo, seed, 12 * 5 * 4 * 20, {**SMALL, **extra})


def test_params_hash_by_hand_and_sensitive_to_one_bit():
    p = {"b": torch.tensor([1.0, 2.0]), "a": torch.zeros(2, 1, dtype=torch.float64)}
    h = hashlib.sha256()
    for name, arr in (("a", np.zeros((2, 1))), ("b", np.array([1.0, 2.0], dtype=np.float32))):
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    assert pairing.params_sha256(p) == h.hexdigest()
    q = {k: v.clone() for k, v in p.items()}
    q["b"][1] = torch.nextafter(q["b"][1], torch.tensor(3.0))
    assert pairing.params_sha256(q) != pairing.params_sha256(p)
    assert pairing.params_sha256({**p, "b": p["b"].double()}) != pairing.params_sha256(p)  # dtype counts


def test_runs_of_one_seed_are_paired_and_other_seeds_are_not(tmp_path):
    metas = {}
    for algo, seed in (("drs-ppo", 3), ("promp", 3), ("promp", 4)):
        metas[(algo, seed)] = train(cfg(algo, seed), tmp_path / f"{algo}_{seed}", quiet=True, max_iterations=0)
    a, b, c = metas[("drs-ppo", 3)]["pairing"], metas[("promp", 3)]["pairing"], metas[("promp", 4)]["pairing"]
    assert pairing.paired(a, b) == (True, "")
    assert pairing.paired(b, c) == (False, "different initial policies")
    # the record is what the function computes from checkpoint 0 and the config's test tasks
    ck = store.load_torch(store.ckpt_path(tmp_path / "promp_3", 0))
    assert b["init_params_sha256"] == pairing.params_sha256(ck["params"])
    assert b["test_tasks_sha256"] == hashlib.sha256(repr(eval_test_tasks(cfg("promp", 3))).encode()).hexdigest()
    # more test tasks: same initial policy, different task list
    other = train(cfg("promp", 3, eval={"n_tasks": 4, "n_updates": 2, "episodes_per_task": 3}),
                  tmp_path / "promp_3_more", quiet=True, max_iterations=0)["pairing"]
    assert pairing.paired(b, other) == (False, "different meta-test tasks")
    assert pairing.paired(b, None)[0] is False and "no pairing record" in pairing.paired(None, b)[1]


def test_ensure_adds_the_record_to_an_old_run_and_keeps_an_existing_one(tmp_path):
    run = tmp_path / "r"
    rec = train(cfg("drs-trpo", 5), run, quiet=True, max_iterations=0)["pairing"]
    meta = store.read_meta(run)
    del meta["pairing"]
    store.write_json(run / store.META_FILE, meta)  # as written before pairing records existed
    assert pairing.ensure(run) == rec and store.read_meta(run)["pairing"] == rec
    store.update_meta(run, pairing={"version": 1, "init_params_sha256": "x", "test_tasks_sha256": "y"})
    assert pairing.ensure(run)["init_params_sha256"] == "x"  # never rewritten
    empty = tmp_path / "e"
    empty.mkdir()
    store.write_json(empty / store.META_FILE, {"checkpoints": []})
    assert pairing.ensure(empty) is None and "pairing" not in store.read_meta(empty)


@pytest.mark.parametrize("bad", [{"version": 2, "init_params_sha256": "a", "test_tasks_sha256": "b"}, "text", {}])
def test_malformed_records_do_not_pair(bad):
    good = {"version": 1, "init_params_sha256": "a", "test_tasks_sha256": "b"}
    assert pairing.paired(good, bad)[0] is False
