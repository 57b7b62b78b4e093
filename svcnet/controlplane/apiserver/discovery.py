"""API discovery documents, built from the kinds table.

Legacy discovery (`/api` APIVersions, `/apis` APIGroupList, `/apis/GROUP` APIGroup,
`/api/v1` and `/apis/GROUP/VERSION` APIResourceList) works with every kubectl; the
aggregated form (`apidiscovery.k8s.io` v2 and v2beta1 APIGroupDiscoveryList on `/api`
and `/apis`) saves kubectl one request per group-version and is served only when the
client asks for it (see negotiation.negotiate_discovery). Everything comes from
`KindInfo` entries: short names (`svc`), categories (`all`), scope, singular names and
subresources, which drive kubectl's name resolution, `get all` and `--subresource`.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence

from svcnet.controlplane.registry.kinds import SUBRESOURCE_KINDS

RESOURCE_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SUBRESOURCE_VERBS = ["get", "patch", "update"]
# subresources that are not get/patch/update (namespaces/finalize is PUT only upstream;
# pods/binding and pods/eviction are POSTed)
SPECIAL_SUBRESOURCE_VERBS = {"finalize": ["update"], "binding": ["create"], "eviction": ["create"]}


def subresource_verbs(sub: str) -> list[str]:
    return list(SPECIAL_SUBRESOURCE_VERBS.get(sub, SUBRESOURCE_VERBS))


def subresource_gvk(k: "Kind", sub: str) -> tuple[str, str, str]:
    """(group, version, kind) of what <plural>/<sub> serves: the parent kind, or another
    one (deployments/scale is an autoscaling/v1 Scale); see `kinds.subresource_kind`."""
    return SUBRESOURCE_KINDS.get(sub, (k.group, k.version, k.kind))


class Kind(Protocol):
    """The fields of registry.kinds.KindInfo that discovery reads."""

    @property
    def group(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def plural(self) -> str: ...
    @property
    def singular(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def namespaced(self) -> bool: ...
    @property
    def short_names(self) -> tuple[str, ...]: ...
    @property
    def categories(self) -> tuple[str, ...]: ...
    @property
    def subresources(self) -> tuple[str, ...]: ...


def group_versions(kinds: Iterable[Kind]) -> dict[str, list[str]]:
    """group -> versions, in table order ("" is the core group)."""
    out: dict[str, list[str]] = {}
    for k in kinds:
        versions = out.setdefault(k.group, [])
        if k.version not in versions:
            versions.append(k.version)
    return out


def _gv(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


def api_versions(server_address: str) -> dict[str, Any]:
    """`GET /api`."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def api_group(group: str, versions: Sequence[str]) -> dict[str, Any]:
    """`GET /apis/GROUP` (and one entry of /apis)."""
    gvs = [{"groupVersion": _gv(group, v), "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": gvs,
            "preferredVersion": gvs[0]}


def api_group_list(kinds: Iterable[Kind]) -> dict[str, Any]:
    """`GET /apis`: every named group (the core group is under /api)."""
    groups = []
    for group, versions in group_versions(kinds).items():
        if group:
            entry = api_group(group, versions)
            del entry["kind"], entry["apiVersion"]
            groups.append(entry)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_resource_list(kinds: Iterable[Kind], group: str, version: str) -> dict[str, Any] | None:
    """`GET /api/v1` or `/apis/GROUP/VERSION`; None when nothing is served there."""
    resources: list[dict[str, Any]] = []
    for k in kinds:
        if (k.group, k.version) != (group, version):
            continue
        entry: dict[str, Any] = {"name": k.plural, "singularName": k.singular, "namespaced": k.namespaced,
                                 "kind": k.kind, "verbs": list(RESOURCE_VERBS)}
        if k.short_names:
            entry["shortNames"] = list(k.short_names)
        if k.categories:
            entry["categories"] = list(k.categories)
        resources.append(entry)
        for sub in k.subresources:
            group_, version_, kind_ = subresource_gvk(k, sub)
            sub_entry: dict[str, Any] = {"name": f"{k.plural}/{sub}", "singularName": "",
                                         "namespaced": k.namespaced}
            if (group_, version_) != (k.group, k.version):
                # as upstream: group and version only when they differ from the parent's
                sub_entry["group"], sub_entry["version"] = group_, version_
            sub_entry["kind"], sub_entry["verbs"] = kind_, subresource_verbs(sub)
            resources.append(sub_entry)
    if not resources:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": _gv(group, version),
            "resources": resources}


def _aggregated_resource(k: Kind) -> dict[str, Any]:
    response_kind = {"group": k.group, "version": k.version, "kind": k.kind}
    entry: dict[str, Any] = {
        "resource": k.plural, "responseKind": response_kind,
        "scope": "Namespaced" if k.namespaced else "Cluster",
        "singularResource": k.singular, "verbs": list(RESOURCE_VERBS),
    }
    if k.short_names:
        entry["shortNames"] = list(k.short_names)
    if k.categories:
        entry["categories"] = list(k.categories)
    if k.subresources:
        entry["subresources"] = [
            {"subresource": s, "responseKind": dict(zip(("group", "version", "kind"), subresource_gvk(k, s))),
             "verbs": subresource_verbs(s)} for s in k.subresources]
    return entry


def aggregated(kinds: Sequence[Kind], *, core: bool, version: str) -> dict[str, Any]:
    """The APIGroupDiscoveryList for `/api` (core=True) or `/apis`, in `apidiscovery.k8s.io/<version>`
    (v2 and v2beta1 share the shape; only apiVersion differs)."""
    items = []
    for group, versions in group_versions(kinds).items():
        if (group == "") != core:
            continue
        metadata: dict[str, Any] = {"creationTimestamp": None}
        if group:
            metadata["name"] = group
        items.append({
            "metadata": metadata,
            "versions": [{"version": v, "freshness": "Current",
                          "resources": [_aggregated_resource(k) for k in kinds
                                        if (k.group, k.version) == (group, v)]}
                         for v in versions],
        })
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": items}
