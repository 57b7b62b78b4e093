"""Where an agent's objects come from: the API (`--kubeconfig`) or a file (`--objects`).

Both give agents the same thing: one `Informer` per resource, fed until cancelled.
An agent asks for its informers first, then awaits `run()`; `run()` never returns
on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Protocol

from svcnet.apiclient.informer import IndexFunc, Informer
from svcnet.apiclient.manifests import ManifestError, load_manifests
from svcnet.apiclient.objects import Obj
from svcnet.apiclient.resources import Resource, resource_for

log = logging.getLogger(__name__)


class ObjectSource(Protocol):
    def informer(self, resource: Resource, indexers: dict[str, IndexFunc] | None = None) -> Informer: ...
    async def run(self) -> None: ...


class FileSource:
    """Objects from a manifest file, reloaded when the file changes.

    A reload delivers only differences (objects in files carry no resourceVersion, so
    content is compared). A file that does not parse is logged and the last good
    state stays, the way an agent keeps serving when its API is briefly wrong.
    Namespaced objects without a namespace land in `default`, as kubectl would put them.
    """

    def __init__(self, path: str | Path, poll_interval: float = 0.25) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._informers: dict[Resource, Informer] = {}
        self._stamp: tuple[int, int, int] | None = None

    def informer(self, resource: Resource, indexers: dict[str, IndexFunc] | None = None) -> Informer:
        inf = self._informers.get(resource)
        if inf is None:
            inf = self._informers[resource] = Informer(resource, indexers)
        elif indexers:
            for name, func in indexers.items():
                inf.add_indexer(name, func)
        return inf

    def load(self) -> None:
        """Read the file once and feed every informer; raises ManifestError on bad input."""
        stamp = self._file_stamp()
        objects = load_manifests(self.path)
        by_resource: dict[Resource, list[Obj]] = {r: [] for r in self._informers}
        for obj in objects:
            res = resource_for(str(obj.get("apiVersion")), str(obj.get("kind")))
            if res is None or res not in by_resource:
                continue
            if res.namespaced and not (obj.get("metadata") or {}).get("namespace"):
                obj = {**obj, "metadata": {**obj["metadata"], "namespace": "default"}}
            by_resource[res].append(obj)
        for res, objs in by_resource.items():
            self._informers[res].replace(objs)
        self._stamp = stamp
        log.info("loaded objects path=%s objects=%d", self.path, len(objects))

    async def run(self) -> None:
        if self._stamp is None:
            self.load()
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                if self._file_stamp() != self._stamp:
                    self.load()
            except (ManifestError, OSError) as e:
                log.error("keeping last good objects: %s", e)
                self._stamp = self._file_stamp_or_none()

    def _file_stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _file_stamp_or_none(self) -> tuple[int, int, int] | None:
        try:
            return self._file_stamp()
        except OSError:
            return None


def open_source(kubeconfig: str | None = None, objects: str | None = None) -> ObjectSource:
    """The source an agent's `--kubeconfig` / `--objects` flags ask for."""
    if objects:
        return FileSource(objects)
    from svcnet.apiclient.api_source import ApiSource  # the REST stack only when used

    return ApiSource.from_kubeconfig(kubeconfig)
