"""Docstrings and comments cite papers (authors, title, year; README "References"), not files outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".txt", ".sh", ".rst"}
# "paper 001", "seed 004", "seeds 000, 004", "seed paper 002", "paper001"; DESIGN.md; a seeds/ folder
FORBIDDEN = re.compile(r"\b(?:paper|seeds?)\s*(?:paper\s*)?0\d\d\b|DESIGN\.md|\bseeds/", re.IGNORECASE)


def text_files():
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO)
        if any(p.startswith(".") or p.endswith(".egg-info") or p == "__pycache__" for p in rel.parts):
            continue
        if path.is_file() and (path.suffix in SUFFIXES or path.name == "Makefile") and path != Path(__file__):
            yield path, rel


def test_no_citations_of_files_outside_the_repository():
    hits = []
    for path, rel in text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "cite the paper by authors, title and year instead:\n" + "\n".join(hits)


def test_the_pattern_catches_file_citations():
    for text in ("paper 001, eq. 1", "Seed 001 sec. 3", "seeds 000, 004", "seed paper 002", "DESIGN.md", "seeds/001"):
        assert FORBIDDEN.search(text), text
    for text in ("seed 0 gives the same frames", "--seed 0", "Shmilovich et al. (2022)"):
        assert not FORBIDDEN.search(text), text
