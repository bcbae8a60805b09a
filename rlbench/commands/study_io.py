"""Input parsing and output writing shared by the theory-study commands (linreg, maml-variants)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rlbench.errors import UsageError


def parse_int(flag: str, text: str, minimum: int) -> int:
    """An integer >= ``minimum`` from a command-line string, else a UsageError naming ``flag``."""
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{flag} expects an integer, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"{flag} must be >= {minimum}, got {value}")
    return value


def output_paths(out: str, names: Iterable[str], force: bool, key: Callable[[str], str] = lambda n: n) -> dict[str, Path]:
    """The output files in ``out``; refuses (before any work) to overwrite them unless ``force``."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    paths = {key(name): out_dir / name for name in names}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise UsageError(f"refusing to overwrite {', '.join(existing)} (pass --force to replace)")
    return paths


def finish(json_path: Path, meta: dict[str, Any], paths: dict[str, Path], wall_s: float) -> int:
    """Write the study's metadata JSON, print every output path, report the wall time."""
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    for p in paths.values():
        print(p)
    print(f"wall time {wall_s:.1f} s", file=sys.stderr)
    return 0
