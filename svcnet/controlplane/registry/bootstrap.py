"""The objects kube-apiserver's bootstrap controller keeps, made idempotently.

The four system namespaces, the `kubernetes` ServiceCIDR (the --service-cidr, as
kube 1.33's default ServiceCIDR), the `default/kubernetes` Service on the first IP of
the service CIDR (443/TCP "https", labels component=apiserver, provider=kubernetes).
Re-running repairs drifted fields. The Service's EndpointSlice and targetPort belong to
`endpoint_reconciler.py`: with several API servers they come from every live server's
Lease, not from whichever server ran this last.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.kinds import KindInfo

if TYPE_CHECKING:
    from svcnet.controlplane.registry.store import Registry

Obj = dict[str, Any]

BOOTSTRAP_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


async def bootstrap(reg: Registry, apiserver_ip: str, apiserver_port: int) -> None:
    """The objects kube-apiserver's bootstrap controller keeps: the four system
    namespaces, the `kubernetes` ServiceCIDR, and the `default/kubernetes` Service
    (first IP of the service CIDR, 443/TCP "https", targetPort this server's port when
    it is created). Idempotent: re-running repairs drifted fields (but not targetPort,
    which the endpoint reconciler keeps)."""
    for ns in BOOTSTRAP_NAMESPACES:
        await _ensure(reg, k.NAMESPACES, None, {"metadata": {"name": ns}}, lambda cur: None)
    await _ensure(reg, k.SERVICE_CIDRS, None, {
        "metadata": {"name": "kubernetes"}, "spec": {"cidrs": list(reg.service_cidrs)}},
        lambda cur: None)
    svc: Obj = {
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": reg.allocator.first_ip(),
                 "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                            "targetPort": apiserver_port}]},
    }

    def fix_service(cur: Obj) -> Obj | None:
        ports = cur.get("spec", {}).get("ports") or []
        want = copy.deepcopy(svc["spec"]["ports"])
        if len(ports) == 1 and ports[0].get("targetPort") is not None:
            want[0]["targetPort"] = ports[0]["targetPort"]  # the endpoint reconciler's
        if ports == want:
            return None
        new = copy.deepcopy(cur)
        new["spec"]["ports"] = want
        return new

    await _ensure(reg, k.SERVICES, "default", svc, fix_service)


async def _ensure(reg: Registry, kind: KindInfo, namespace: str | None, obj: Obj,
                  fix: Callable[[Obj], Obj | None]) -> None:
    """Create `obj` or repair it with `fix`. Several apiservers bootstrap one store at
    once (HA on etcd): losing a create race (AlreadyExists, or Invalid for an IP a peer just took) or an update race
    (409 Conflict) to a peer only means reading again and rechecking."""
    name = obj["metadata"]["name"]
    for _ in range(5):
        try:
            cur = await reg.get(kind, namespace, name)
        except APIError as err:
            if err.code != 404:
                raise
            try:
                await reg.create(kind, namespace, copy.deepcopy(obj), field_manager="kube-apiserver")
                return
            except APIError:
                # A peer's create won: AlreadyExists, or for the `kubernetes` Service
                # an Invalid "IP already allocated". Either way, reread; a failure
                # with no peer object behind it is real and goes up.
                if not await _exists(reg, kind, namespace, name):
                    raise
                continue
        new = fix(cur)
        if new is None:
            return
        try:
            await reg.update(kind, namespace, name, new, field_manager="kube-apiserver")
            return
        except APIError as race:
            if race.code != 409:
                raise
    raise APIError(409, "Conflict", f"bootstrap could not settle {kind.plural} {name!r}: "
                                    "it kept changing under concurrent apiservers")


async def _exists(reg: Registry, kind: KindInfo, namespace: str | None, name: str) -> bool:
    try:
        await reg.get(kind, namespace, name)
        return True
    except APIError as err:
        if err.code == 404:
            return False
        raise
