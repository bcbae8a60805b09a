"""The project owns its protocol document: docs/protocol.md section 9 and the README's
deviations summary list the same choices, and nothing in the repository cites a protocol file
outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _first_column(text: str, heading: str) -> list[str]:
    section = text[text.index(heading):]
    rows = []
    started = False
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            cell = line.split("|")[1].strip()
            if cell not in ("choice", "") and not set(cell) <= {"-", ":"}:
                rows.append(cell)
        elif started:
            break
    return rows


def test_readme_deviations_table_matches_docs_protocol_section_9():
    docs = _first_column((ROOT / "docs" / "protocol.md").read_text(), "## 9. Deviations")
    readme = _first_column((ROOT / "README.md").read_text(), "## Protocol choices and deviations")
    assert len(docs) >= 10
    assert readme == docs


def test_code_cites_docs_protocol_sections_that_exist():
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)", (ROOT / "docs" / "protocol.md").read_text(), re.M))
    headings |= set(re.findall(r"\*\*(\d+\.\d+) ", (ROOT / "docs" / "protocol.md").read_text()))
    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.yaml", "*.cfg", "*.toml"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    cited, outside = set(), []
    for f in files:
        text = (ROOT / f).read_text(errors="replace")
        cited |= set(re.findall(r"docs/protocol\.md,? sections? (\d+(?:\.\d+)?)", text))
        if f.startswith(("results/",)) or f == "tests/test_docs.py":
            continue
        if "../shared" in text or "PROTOCOL.md" in text:
            outside.append(f)
    assert not outside, f"files citing a protocol outside the repository: {outside}"
    assert cited and cited <= headings, f"sections cited but missing: {sorted(cited - headings)}"
