"""Compare the numbers of two run directories (e.g. ``rlbench run smoke`` before and after a
change that must not alter results).

    python scripts/compare_run_dirs.py DIR_A DIR_B [--tol 0] [--only evaluation.csv metrics.jsonl]

Every ``*.csv`` and ``*.jsonl`` file under either directory (runs' ``evaluation.csv``,
``evaluation/ckpt_*.csv``, ``metrics.jsonl``, and the comparison tables) is matched by its
relative path. For each file pair: rows must correspond one to one, non-numeric columns must be
equal, and the script prints the largest absolute difference over the numeric columns (NaN
equals NaN), leaving out wall-clock fields (``time/*`` keys, names ending in ``_s`` or
containing ``per_s``, ``wall`` or ``seconds``). Exit status 0 if every file matches within
``--tol`` (default 0: bit-identical numbers), 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TIMING = re.compile(r"(^time/|_s$|per_s|wall|seconds)")


def read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".jsonl":
        return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    return pd.read_csv(path, keep_default_na=True)


def compare_frames(a: pd.DataFrame, b: pd.DataFrame) -> tuple[float, list[str]]:
    """(max abs difference of numeric non-timing columns, list of problems)."""
    problems = []
    cols_a, cols_b = [c for c in a.columns if not TIMING.search(str(c))], [c for c in b.columns if not TIMING.search(str(c))]
    if set(cols_a) != set(cols_b):
        problems.append(f"columns differ: only in A {sorted(set(cols_a) - set(cols_b))}, only in B {sorted(set(cols_b) - set(cols_a))}")
    if len(a) != len(b):
        problems.append(f"row counts differ: {len(a)} vs {len(b)}")
        return float("nan"), problems
    worst = 0.0
    for col in [c for c in cols_a if c in set(cols_b)]:
        x, y = a[col], b[col]
        numeric = pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y)
        if numeric and not (pd.api.types.is_bool_dtype(x) or pd.api.types.is_bool_dtype(y)):
            xv, yv = x.to_numpy(dtype=float), y.to_numpy(dtype=float)
            nan_x, nan_y = np.isnan(xv), np.isnan(yv)
            if (nan_x != nan_y).any():
                problems.append(f"{col}: NaN in different rows")
            both = ~(nan_x | nan_y)
            if both.any():
                worst = max(worst, float(np.max(np.abs(xv[both] - yv[both]))))
        else:
            neq = ~((x == y) | (x.isna() & y.isna()))
            if neq.any():
                problems.append(f"{col}: {int(neq.sum())} non-numeric values differ (first at row {int(np.argmax(neq.to_numpy()))})")
    return worst, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir_a", type=Path)
    ap.add_argument("dir_b", type=Path)
    ap.add_argument("--tol", type=float, default=0.0, help="largest accepted absolute difference (default 0)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="compare only files with these names (e.g. evaluation.csv metrics.jsonl)")
    args = ap.parse_args(argv)
    for d in (args.dir_a, args.dir_b):
        if not d.is_dir():
            print(f"error: {d} is not a directory", file=sys.stderr)
            return 2

    def files(root: Path) -> set[Path]:
        found = {p.relative_to(root) for ext in ("*.csv", "*.jsonl") for p in root.rglob(ext)}
        return {p for p in found if not args.only or p.name in args.only}

    fa, fb = files(args.dir_a), files(args.dir_b)
    if not fa | fb:
        print("error: no .csv or .jsonl files to compare", file=sys.stderr)
        return 2
    differ = 0
    for rel in sorted(fa | fb):
        if rel not in fa or rel not in fb:
            print(f"DIFF  {rel}: only in {'B' if rel not in fa else 'A'}")
            differ += 1
            continue
        worst, problems = compare_frames(read_table(args.dir_a / rel), read_table(args.dir_b / rel))
        bad = bool(problems) or not worst <= args.tol
        differ += bad
        print(f"{'DIFF' if bad else 'same'}  {rel}: max abs diff {worst:.3g}" + "".join(f"; {p}" for p in problems))
    print(f"{len(fa | fb)} files compared, {differ} differ (tolerance {args.tol:g})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
