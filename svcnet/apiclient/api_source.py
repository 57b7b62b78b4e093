"""ApiSource: informers fed from a Kubernetes API server (the `--kubeconfig` source).

    source = ApiSource.from_kubeconfig(args.kubeconfig)   # or None: as kubectl finds it
    services = source.informer(SERVICES)
    slices = source.informer(ENDPOINT_SLICES, {"service": label_index(SERVICE_NAME_LABEL)})
    task = asyncio.create_task(source.run())               # one Reflector per informer
    await services.wait_for_sync()
    await source.client.update_status(SERVICES, svc)       # writes share the connection

Informers are shared: asking twice for the same resource (and the same namespace
and selectors) returns the same Informer, with any new indexers added. Informers
asked for after `run()` started get their reflector at once. Cancelling `run()`
stops every reflector and closes the client.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from svcnet.apiclient.client import RestClient, selector_string
from svcnet.apiclient.informer import IndexFunc, Informer
from svcnet.apiclient.kubeconfig import load_config
from svcnet.apiclient.reflector import Backoff, Clock, Reflector, SystemClock
from svcnet.apiclient.resources import Resource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Key:
    resource: Resource
    namespace: str | None
    label_selector: str | None
    field_selector: str | None


class ApiSource:
    """An `ObjectSource` over a RestClient; see the module docstring."""

    def __init__(self, client: RestClient, *, clock: Clock | None = None,
                 min_watch_timeout: float = 300.0, max_backoff: float = 30.0) -> None:
        self.client = client
        self._clock = clock or SystemClock()
        self._min_watch_timeout = min_watch_timeout
        self._max_backoff = max_backoff
        self._informers: dict[_Key, Informer] = {}
        self.reflectors: dict[_Key, Reflector] = {}
        self._added = asyncio.Event()  # binds to a loop only when first awaited

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, *, context: str | None = None,
                        **kwargs: Any) -> ApiSource:
        """From the kubeconfig at `path`, or the one kubectl would use, or in-cluster."""
        return cls(RestClient.from_config(load_config(path, context=context)), **kwargs)

    def informer(self, resource: Resource, indexers: dict[str, IndexFunc] | None = None, *,
                 namespace: str | None = None, label_selector: str | dict[str, str] | None = None,
                 field_selector: str | dict[str, str] | None = None) -> Informer:
        """The shared informer for a resource (optionally narrowed by namespace/selectors)."""
        key = _Key(resource, namespace or None, selector_string(label_selector),
                   selector_string(field_selector))
        inf = self._informers.get(key)
        if inf is None:
            inf = self._informers[key] = Informer(resource, indexers)
            self._added.set()
        elif indexers:
            for name, func in indexers.items():
                inf.add_indexer(name, func)
        return inf

    async def run(self) -> None:
        """Run one Reflector per informer until cancelled, then close the client."""
        tasks: dict[_Key, asyncio.Task[None]] = {}
        try:
            while True:
                self._added.clear()
                for key, inf in list(self._informers.items()):
                    if key not in tasks:
                        refl = Reflector(self.client, key.resource, inf, namespace=key.namespace,
                                         label_selector=key.label_selector,
                                         field_selector=key.field_selector, clock=self._clock,
                                         min_watch_timeout=self._min_watch_timeout,
                                         backoff=Backoff(self._clock, maximum=self._max_backoff))
                        self.reflectors[key] = refl
                        tasks[key] = asyncio.create_task(refl.run(), name=f"reflector {refl.name}")
                await self._added.wait()
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            await self.client.close()

    def reflector_for(self, resource: Resource) -> Reflector | None:
        """The (first) reflector feeding `resource`, for diagnostics and tests."""
        for key, refl in self.reflectors.items():
            if key.resource == resource:
                return refl
        return None

