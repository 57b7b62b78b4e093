"""Fixtures for lab integration tests: a uniquely named lab whose state file is
always torn down, also when the test fails."""

from __future__ import annotations

import itertools
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from svcnet.lab.netns import list_netns
from svcnet.lab.state import StateFile
from svcnet.lab.teardown import teardown

_seq = itertools.count()


@pytest.fixture
def lab_name() -> str:
    # at most 16 characters, unique per test process and test
    return f"t{os.getpid() % 100000}x{next(_seq)}"


@pytest.fixture
async def lab_state(tmp_path: Path, lab_name: str) -> AsyncIterator[StateFile]:
    state = StateFile(tmp_path / "state.jsonl")
    try:
        yield state
    finally:
        report = await teardown(state, grace=2.0)
        assert report.ok, report.errors
        left = [n for n in list_netns() if n.startswith(lab_name + "-")]
        assert not left, f"namespaces left behind: {left}"


def wait_ready(proc: subprocess.Popen[str], marker: str = "ready", timeout: float = 20.0) -> None:
    """Read the program's stdout until `marker` (bounded), so tests never sleep."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            buf += chunk
            if marker.encode() in buf:
                return
            if not chunk and proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode} before {marker!r}: {buf!r}")
    raise AssertionError(f"no {marker!r} within {timeout}s: {buf!r}")


def netns_python(netns: str, code: str, timeout: float = 20) -> str:
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()
