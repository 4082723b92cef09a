"""The benchmarks' peak memory: a worker started by a large parent reports its own peak, not the parent's."""

import subprocess
import sys

import numpy as np
import pytest

from hardneg.bench.memory import peak_rss_mb

CHILD = "from hardneg.bench.memory import peak_rss_mb; import resource; " \
        "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_child_of_a_large_parent_reports_its_own_peak():
    big = np.ones(400 * 2**20 // 8)  # 400 MB, touched
    assert peak_rss_mb() > 400
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    ours, maxrss = map(float, out.stdout.split())
    assert ours < 300  # an interpreter with numpy and torch, not the parent's 400 MB array
    assert maxrss > 400  # the fixture is real: ru_maxrss reports the parent's size across fork and exec
    del big


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_of_another_process():
    code = "import numpy, sys, time; a = numpy.ones(2**25); print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"  # its 256 MB array is touched
        assert peak_rss_mb(child.pid) > 256
    finally:
        child.kill()
        child.wait()
    assert peak_rss_mb(child.pid) == 0.0  # gone
