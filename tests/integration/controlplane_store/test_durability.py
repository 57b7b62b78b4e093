"""kill -9 durability: every write the store acknowledged is there after a crash, the
revision keeps increasing, and allocations match the Services that hold them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.allocators import CLUSTER_IP_PREFIX, NODE_PORT_PREFIX
from svcnet.controlplane.registry.store import Registry

WRITER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from svcnet.controlplane.registry import kinds as k
    from svcnet.controlplane.registry.store import Registry

    async def main():
        reg = await Registry.open(Path(sys.argv[1]))
        await reg.bootstrap("192.0.2.10", 6443)
        i = 0
        while True:  # until killed
            body = {"metadata": {"name": f"s{i}"},
                    "spec": {"type": "NodePort", "ports": [{"port": 80}]}}
            out, _ = await reg.create(k.SERVICES, "default", body)
            print(out["metadata"]["name"], out["metadata"]["resourceVersion"],
                  out["spec"]["clusterIP"], out["spec"]["ports"][0]["nodePort"], flush=True)
            i += 1

    asyncio.run(main())
""")


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(data)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    acked: list[tuple[str, int, str, int]] = []
    try:
        assert proc.stdout is not None
        while len(acked) < 60:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            name, rv, ip, port = line.split()
            acked.append((name, int(rv), ip, int(port)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # lines printed between our last read and the kill are acknowledged too
        for line in proc.stdout.read().splitlines():
            name, rv, ip, port = line.split()
            acked.append((name, int(rv), ip, int(port)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reg = await Registry.open(data)
    try:
        last_rv = max(rv for _, rv, _, _ in acked)
        assert reg.current_revision >= last_rv
        for name, rv, ip, port in acked:
            obj = await reg.get(k.SERVICES, "default", name)
            assert obj["metadata"]["resourceVersion"] == str(rv)
            assert obj["spec"]["clusterIP"] == ip and obj["spec"]["ports"][0]["nodePort"] == port
        # allocations and services agree, one key per held value
        services = (await reg.list(k.SERVICES, None))["items"]
        ips = {s["spec"]["clusterIP"] for s in services}
        ports = {s["spec"]["ports"][0]["nodePort"] for s in services if s["spec"]["type"] == "NodePort"}
        ip_keys = {kv.key[len(CLUSTER_IP_PREFIX):] for kv in (await reg.storage.range(CLUSTER_IP_PREFIX)).kvs}
        port_keys = {int(kv.key[len(NODE_PORT_PREFIX):])
                     for kv in (await reg.storage.range(NODE_PORT_PREFIX)).kvs}
        assert ip_keys == ips and port_keys == ports
        out, _ = await reg.create(k.SERVICES, "default", {"metadata": {"name": "after"},
                                                          "spec": {"ports": [{"port": 80}]}})
        assert int(out["metadata"]["resourceVersion"]) > last_rv
        assert out["spec"]["clusterIP"] not in ips
    finally:
        await reg.close()
