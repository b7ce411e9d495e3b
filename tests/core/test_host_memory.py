"""Large host tensors on huge pages: the entry points turn torch's switch on (importing the package does
not), and a 64 MiB tensor then costs a few dozen page faults instead of one per 4 KiB page."""

import os
import subprocess
import sys

import pytest

from justrl_min.host_memory import KERNEL_MODE, SWITCH, huge_pages_status

PROBE = """
import resource, torch
from justrl_min.host_memory import ask_for_huge_pages, huge_pages_status
ask_for_huge_pages()
print(huge_pages_status())
def faults_of_one_allocation():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.zeros(64 * 2**20 // 4)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_allocation()
print("FAULTS", faults_of_one_allocation())
"""


def _probe(switch: str | None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != SWITCH}
    if switch is not None:
        env[SWITCH] = switch
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env).stdout
    return int(out.split("FAULTS ")[1]), out


def test_importing_the_package_changes_no_environment_variable():
    env = {k: v for k, v in os.environ.items() if k != SWITCH}
    probe = "import os, justrl_min, justrl_min.trainer; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "None"


def test_the_entry_points_ask_for_huge_pages_unless_the_environment_says_otherwise():
    if not KERNEL_MODE.is_file() or "[never]" in KERNEL_MODE.read_text():
        pytest.skip(f"this kernel has no transparent huge pages ({KERNEL_MODE})")
    small_pages, said_off = _probe("0")
    huge_pages, said_on = _probe(None)
    assert "4 KiB pages" in said_off and "transparent huge pages for tensors" in said_on
    assert small_pages > 10_000   # 16,384 pages of 4 KiB, each faulted in on first touch
    assert huge_pages < 1_000     # 32 pages of 2 MiB (plus bookkeeping)


def test_the_status_says_why_there_are_no_huge_pages(monkeypatch, tmp_path):
    monkeypatch.setenv(SWITCH, "1")
    never = tmp_path / "enabled"
    never.write_text("always madvise [never]\n")
    monkeypatch.setattr("justrl_min.host_memory.KERNEL_MODE", never)
    assert "off in this kernel" in huge_pages_status()
    monkeypatch.setenv(SWITCH, "0")
    assert "4 KiB pages (THP_MEM_ALLOC_ENABLE='0')" in huge_pages_status()
