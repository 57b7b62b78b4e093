"""A container as a process: started inside the pod's namespace the way
`ip netns exec` enters it (mount namespace with /etc/netns/<netns>/ bind-mounted,
so dig and getaddrinfo read the pod's resolv.conf), in its own session so the
whole process group can be signalled, with stdout and stderr appended to a log.

Stopping follows the kubelet: SIGTERM to the process group, the grace period,
then SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from svcnet.lab.netns import netns_exec_argv

log = logging.getLogger(__name__)


class ContainerProcess:
    def __init__(self, name: str, netns: str, argv: list[str], env: dict[str, str],
                 cwd: str | None, log_path: Path) -> None:
        self.name, self.netns, self.argv, self.env, self.cwd, self.log_path = name, netns, argv, env, cwd, log_path
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *netns_exec_argv(self.netns, self.argv), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=out, env=self.env, cwd=self.cwd or None, start_new_session=True)
        log.debug("started container=%s pid=%d argv=%s", self.name, self.proc.pid, self.argv)
        return self.proc.pid

    async def wait(self) -> int:
        assert self.proc is not None, "start() first"
        return await self.proc.wait()

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, grace: float) -> int | None:
        """SIGTERM the process group, wait `grace` seconds, SIGKILL; the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(max(grace, 0.0)):
                    await self.proc.wait()
            except TimeoutError:
                log.info("container=%s pid=%d still running after %.0fs grace: SIGKILL",
                         self.name, self.proc.pid, grace)
                self._signal(signal.SIGKILL)
                await self.proc.wait()
        # Children that outlived the main process (the group lingers): they go too.
        self._signal(signal.SIGKILL)
        return self.proc.returncode

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
