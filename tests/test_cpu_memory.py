"""retain_freed_memory: measured by the kernel's page-fault counter, in fresh processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from finegrain.platform.cpu_memory import retain_freed_memory

_PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from finegrain.platform.cpu_memory import retain_freed_memory

    def faults():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            xs = [torch.ones(1024, 22, 22) * k for k in range(40)]  # 40 x 2 MB temporaries, as one energy call
            del xs
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    applied = retain_freed_memory() if sys.argv[1] == "1" else None
    faults()  # first round maps what the process keeps
    print(applied, faults())
    """
)


def _probe(apply: bool) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, "1" if apply else "0"], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_retained_memory_is_reused_without_page_faults():
    _, default_faults = _probe(apply=False)
    applied, kept_faults = _probe(apply=True)
    assert applied == "True"
    pages_per_round = 10 * 40 * 1024 * 22 * 22 * 4 // 4096
    assert default_faults > pages_per_round // 2  # glibc maps and unmaps the temporaries every time
    assert kept_faults < pages_per_round // 100  # ... and with the setting reuses them


def test_threshold_is_checked():
    with pytest.raises(ValueError, match="mmap_threshold"):
        retain_freed_memory(0)
