"""Teardown's process stage with real (unprivileged) processes: etcd members are
stopped after every other process and one at a time, and a process that ignores
SIGTERM is SIGKILLed and gone by the time teardown returns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from svcnet.lab.state import StateFile
from svcnet.lab.teardown import teardown

# On SIGTERM: write "<label> start", linger a moment (an etcd member handing over
# leadership), write "<label> end", exit. Prints "ready" once the handler is in place.
STUB = """
import os, signal, sys, time
label, log = sys.argv[1], sys.argv[2]
def term(*_):
    with open(log, "a") as f:
        f.write(label + " start\\n"); f.flush(); time.sleep(0.2); f.write(label + " end\\n")
    os._exit(0)
signal.signal(signal.SIGTERM, term)
print("ready", flush=True)
while True:
    time.sleep(1)
"""

IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def _start(code: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


async def test_etcd_members_stop_last_and_one_at_a_time(tmp_path: Path) -> None:
    log = tmp_path / "stops.log"
    state = StateFile(tmp_path / "state.jsonl")
    procs = {}
    # Recorded in the order `lab up` starts them: etcd first.
    for name in ("etcd-lab-etcd1", "etcd-lab-etcd2", "apiserver-lab-apiserver1", "node-agent-lab-worker"):
        procs[name] = _start(STUB, name, str(log))
        state.record_process(name, procs[name].pid, owner="lab")
    try:
        report = await teardown(state, grace=5.0)
        assert report.ok, report.errors
        lines = log.read_text().splitlines()
        clients = {"apiserver-lab-apiserver1", "node-agent-lab-worker"}
        assert {ln.split()[0] for ln in lines[:4]} == clients, f"clients stop first: {lines}"
        assert lines[4:] == ["etcd-lab-etcd1 start", "etcd-lab-etcd1 end",
                             "etcd-lab-etcd2 start", "etcd-lab-etcd2 end"], f"etcd one at a time: {lines}"
        assert not state.exists()
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


async def test_sigkilled_process_is_gone_when_teardown_returns(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.jsonl")
    proc = _start(IGNORES_TERM)
    state.record_process("stubborn", proc.pid, owner="lab")
    try:
        report = await teardown(state, grace=0.2)
        assert report.ok, report.errors
        # Exited already (poll() only reaps; it does not wait): killed by SIGKILL.
        assert proc.poll() == -9
        assert "process stubborn (pid %d)" % proc.pid in report.removed
    finally:
        proc.kill()
        proc.wait()
