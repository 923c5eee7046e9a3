"""retain_freed_memory: measured by the kernel's page-fault counter, in fresh processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from finegrain.platform.services.cpu_memory import retain_freed_memory

# five batched pair-energy evaluations (ADP-sized: B = 1024 frames of 22 atoms), the workload the
# setting is for; prints (applied, minor page faults of the last five calls)
_PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from finegrain.platform.services.cpu_memory import retain_freed_memory
    from finegrain.platform.science.energies.pairs import pair_energies

    n, g = 22, torch.Generator().manual_seed(0)
    tables = {k: torch.rand(n, n, generator=g) * (1 - torch.eye(n)) for k in ("sig6", "eps4", "qq", "qgb")}
    tables.update({k: 0.1 + 0.1 * torch.rand(n, generator=g) for k in ("rho", "s", "radius", "self_gb", "ace")})
    tables["eye"] = torch.eye(n)
    pos = torch.rand(1024, n, 3, generator=g)

    def faults():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            pair_energies(pos, tables, nonbonded=True, gbsa=True, grad="total")
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    applied = retain_freed_memory() if sys.argv[1] == "1" else None
    faults()  # the first calls map what the process then keeps
    print(applied, faults())
    """
)


def _probe(apply: bool) -> tuple[str, int]:
    # glibc's own default adapts its mmap threshold to what the process frees, depending on the
    # order of allocations; pinning the default threshold (128 KiB) makes the baseline deterministic
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", _PROBE, "1" if apply else "0"], capture_output=True, text=True,
                         check=True, timeout=300, env=env).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_retained_memory_is_reused_without_page_faults():
    _, default_faults = _probe(apply=False)
    applied, kept_faults = _probe(apply=True)
    assert applied == "True"
    assert default_faults > 5 * 1000  # glibc maps fresh pages for the temporaries of every call
    assert kept_faults < default_faults / 10  # ... and with the setting (applied at run time) reuses them


def test_threshold_is_checked():
    with pytest.raises(ValueError, match="mmap_threshold"):
        retain_freed_memory(0)
