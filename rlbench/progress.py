"""Progress bars (tqdm) with steps/s and ETA; silent in quiet mode or when stderr is not a terminal
unless forced with RLBENCH_PROGRESS=1."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress(total: int, desc: str, unit: str = "step", initial: int = 0, disable: bool = False) -> Any:
    forced = os.environ.get("RLBENCH_PROGRESS") == "1"
    quiet = disable or (not forced and not sys.stderr.isatty())
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                disable=quiet, smoothing=0.1)
