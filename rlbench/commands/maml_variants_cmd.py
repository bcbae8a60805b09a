"""``rlbench maml-variants``: MAML vs FO-MAML vs HF-MAML, and multi-step MAML, on supervised problems.

Runs the two studies of ``studies.maml_variants`` (defaults: ``DEFAULTS`` there):

* rank-one matrix factorisation (Fallah, Mokhtari & Ozdaglar, AISTATS 2020): the true
  meta-gradient norm of MAML, FO-MAML and HF-MAML with exact and stochastic gradients, for
  similar and dissimilar tasks -> factorisation.csv, factorisation.png/.pdf;
* multi-step MAML on meta-linear regression (Ji, Yang & Liang): the meta-objective for
  K = 1, 2, 5, 10 inner steps with a fixed inner step size and with c / K -> kstep.csv,
  kstep_summary.csv, kstep.png/.pdf;

plus maml_variants.json (command, settings, final numbers, versions, wall time) in --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import time
from pathlib import Path

from rlbench import store
from rlbench.commands.study_io import finish, output_paths, parse_int

OUTPUT_NAMES = (
    "factorisation.csv", "factorisation.png", "factorisation.pdf",
    "kstep.csv", "kstep_summary.csv", "kstep.png", "kstep.pdf",
    "maml_variants.json",
)


def _output_paths(out: str, force: bool) -> dict[str, Path]:
    return output_paths(out, OUTPUT_NAMES, force)


def canonical_command(iterations: int, seed: int, out: str) -> str:
    """The command line (every option explicit) that reproduces a run."""
    parts = ["rlbench", "maml-variants", "--iterations", str(iterations), "--seed", str(seed), "--out", out]
    return " ".join(shlex.quote(p) for p in parts)


def _save(fig, png: Path, pdf: Path, creator: str) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(png, dpi=110)
    # Fixed metadata keep the PDF byte-stable across runs with the same inputs.
    fig.savefig(pdf, metadata={"CreationDate": None, "Producer": None, "Creator": creator})
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    from studies.maml_variants import DEFAULTS

    iterations = parse_int("--iterations", args.iterations, 1) if args.iterations is not None else DEFAULTS.iterations
    seed = parse_int("--seed", args.seed, 0) if args.seed is not None else DEFAULTS.seed
    paths = _output_paths(args.out, args.force)  # checked before any computing


    from studies import maml_variants as mv

    cfg = dataclasses.replace(DEFAULTS, iterations=iterations, seed=seed)
    start = time.perf_counter()
    fact = mv.factorisation_study(cfg)
    fact_s = time.perf_counter() - start
    curves, summary = mv.kstep_study(cfg)
    compute_s = time.perf_counter() - start

    Path(args.out).mkdir(parents=True, exist_ok=True)
    fact.to_csv(paths["factorisation.csv"], index=False, float_format="%.6g")
    curves.to_csv(paths["kstep.csv"], index=False, float_format="%.6g")
    summary.to_csv(paths["kstep_summary.csv"], index=False, float_format="%.6g")
    _save(mv.plot_factorisation(fact, cfg), paths["factorisation.png"], paths["factorisation.pdf"], "rlbench maml-variants")
    _save(mv.plot_kstep(curves, summary, cfg), paths["kstep.png"], paths["kstep.pdf"], "rlbench maml-variants")
    wall_s = time.perf_counter() - start

    finals = mv.final_norms(fact)
    meta = {
        "command": canonical_command(iterations, seed, args.out),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()},
        "factorisation_final_meta_grad_norm": finals.to_dict(orient="records"),
        "factorisation_final_note": "median true meta-gradient norm over the last 10% of iterations",
        "kstep_summary": json.loads(summary.to_json(orient="records")),
        "factorisation_seconds": round(fact_s, 2),
        "compute_seconds": round(compute_s, 2),
        "wall_seconds": round(wall_s, 2),
        "versions": store.versions(),
        "references": [
            "Fallah, Mokhtari & Ozdaglar, On the Convergence Theory of Gradient-Based Model-Agnostic Meta-Learning Algorithms, AISTATS 2020",
            "Ji, Yang & Liang, Multi-Step Model-Agnostic Meta-Learning: Convergence and Improved Algorithms (Theoretical Convergence of Multi-Step MAML, JMLR 2022)",
        ],
    }
    return finish(paths["maml_variants.json"], meta, paths, wall_s)


def register(sub) -> None:
    """Add the ``maml-variants`` subcommand."""
    from studies.maml_variants import DEFAULTS

    p = sub.add_parser(
        "maml-variants",
        help="MAML / FO-MAML / HF-MAML on rank-one factorisation, and multi-step MAML step sizes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Values are parsed by this module (not argparse's type=) so bad input raises UsageError.
    p.add_argument("--iterations", metavar="N", help=f"meta-training iterations of every run, >= 1 (default {DEFAULTS.iterations})")
    p.add_argument("--seed", metavar="S", help=f"root seed, >= 0 (default {DEFAULTS.seed})")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs in DIR")
    p.set_defaults(func=_run)
