"""keep_freed_memory: glibc's thresholds are set once (a CPU sweep then reuses its large buffers
instead of faulting fresh pages in for every block call), and NEAT_LLM_KEEP_MEMORY=0 turns it off."""

import os
import subprocess
import sys

import pytest

CODE = """
import resource, torch
from neat_llm.allocator import keep_freed_memory
on = keep_freed_memory()
x = torch.ones(1024, 4096)  # 16 MiB: above glibc's default mmap threshold
for _ in range(3):
    (x * 2).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    (x * 2).sum()
print(on, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(env_value: str) -> tuple[bool, int]:
    env = {**os.environ, "NEAT_LLM_KEEP_MEMORY": env_value, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True)
    on, faults = out.stdout.split()
    return on == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_buffers_are_reused_without_page_faults():
    on, faults = _run("1")
    off, _ = _run("0")
    assert on and not off
    # 20 fresh 16 MiB buffers would fault in ~4,000 pages each if they were unmapped after every
    # use (what glibc's defaults do, depending on its dynamic threshold: not asserted here)
    assert faults < 1000, faults
