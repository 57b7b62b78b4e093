"""Small helpers over Kubernetes objects as they travel: plain JSON dicts."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def meta(obj: Obj) -> dict[str, Any]:
    m: dict[str, Any] = obj.get("metadata") or {}
    return m


def namespace_of(obj: Obj) -> str:
    return str(meta(obj).get("namespace") or "")


def name_of(obj: Obj) -> str:
    return str(meta(obj).get("name") or "")


def key_of(obj: Obj) -> str:
    """client-go's MetaNamespaceKeyFunc: `ns/name`, or `name` for cluster-scoped objects."""
    ns = namespace_of(obj)
    return f"{ns}/{name_of(obj)}" if ns else name_of(obj)


def resource_version_of(obj: Obj) -> str:
    return str(meta(obj).get("resourceVersion") or "")


def labels_of(obj: Obj) -> dict[str, str]:
    labels: dict[str, str] = meta(obj).get("labels") or {}
    return labels


def annotations_of(obj: Obj) -> dict[str, str]:
    ann: dict[str, str] = meta(obj).get("annotations") or {}
    return ann
