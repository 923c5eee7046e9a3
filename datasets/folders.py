"""Folders written all at once: readers see the old folder or the finished new one, never half of one."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_folder"]


@contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out``; when the block ends, it replaces ``out`` (``os.replace``).

    When the block raises (a bad input found half way, Ctrl-C), the temporary folder is removed and
    ``out`` is left as it was.
    """
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
