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


class AdoptedProcess(ContainerProcess):
    """A container an earlier run of the agent started, taken over by pid.

    It is not our child, so its exit status cannot be collected: a pidfd says
    when it exits (readable on exit, Linux 5.3), and the exit is reported the way
    the kubelet reports a container it lost track of (ContainerStatusUnknown, 137).
    """

    LOST_EXIT_CODE = 137

    def __init__(self, name: str, pid: int) -> None:
        super().__init__(name, "", [], {}, None, Path("/dev/null"))
        self._pid = pid
        self._fd = os.pidfd_open(pid)
        self._exited = asyncio.Event()
        self.returncode: int | None = None
        asyncio.get_running_loop().add_reader(self._fd, self._on_exit)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)
        self.returncode = self.LOST_EXIT_CODE
        self._exited.set()

    @property
    def pid(self) -> int | None:
        return self._pid

    async def start(self) -> int:
        raise RuntimeError("an adopted container is already running")

    async def wait(self) -> int:
        await self._exited.wait()
        return self.LOST_EXIT_CODE

    def running(self) -> bool:
        return not self._exited.is_set()

    async def stop(self, grace: float) -> int | None:
        if self.running():
            self._killpg(signal.SIGTERM)
            try:
                async with asyncio.timeout(max(grace, 0.0)):
                    await self._exited.wait()
            except TimeoutError:
                self._killpg(signal.SIGKILL)
                await self._exited.wait()
        self._killpg(signal.SIGKILL)
        return self.returncode

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self._pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
