"""The `scale` subresource (autoscaling/v1 Scale) of Deployments.

`kubectl scale deployment web --replicas=3` PATCHes `deployments/web/scale` with
`{"spec":{"replicas":3}}` and reads a Scale back; HPA-style clients GET and PUT it. The
Scale is a view: spec.replicas is the Deployment's, status.replicas and status.selector
(the label selector in its string form) come from the Deployment's status and spec.
"""

from __future__ import annotations

from typing import Any

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry.kinds import DEPLOYMENTS, KindInfo
from svcnet.controlplane.registry.selectors import label_selector_from_dict
from svcnet.controlplane.registry.strategies.validation import FieldError, invalid_value, required

Obj = dict[str, Any]

SCALE_API_VERSION = "autoscaling/v1"
SCALE_DEFINITION = "io.k8s.api.autoscaling.v1.Scale"
SCALABLE: tuple[KindInfo, ...] = (DEPLOYMENTS,)


def to_scale(obj: Obj) -> Obj:
    """The Scale view of a scalable object."""
    meta = obj.get("metadata") or {}
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    try:
        selector = str(label_selector_from_dict(spec.get("selector") or {}))
    except APIError:
        selector = ""
    scale_status: dict[str, Any] = {"replicas": int(status.get("replicas") or 0)}
    if selector:
        scale_status["selector"] = selector
    return {
        "kind": "Scale", "apiVersion": SCALE_API_VERSION,
        "metadata": {f: meta[f] for f in ("name", "namespace", "uid", "resourceVersion",
                                          "creationTimestamp") if f in meta},
        "spec": {"replicas": int(spec.get("replicas") or 0)},
        "status": scale_status,
    }


def validate_scale(scale: Any) -> list[FieldError]:
    if not isinstance(scale, dict):
        return [required("spec")]
    replicas = (scale.get("spec") or {}).get("replicas")
    if replicas is None:
        return [required("spec.replicas")]
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        return [invalid_value("spec.replicas", replicas, "must be greater than or equal to 0")]
    return []


def check_scale_body(scale: Any) -> None:
    """A Scale body must say it is one (or say nothing)."""
    if not isinstance(scale, dict):
        raise APIError(400, "BadRequest", "the body of the request must be a Scale object")
    kind, api_version = scale.get("kind"), scale.get("apiVersion")
    if kind not in (None, "", "Scale") or api_version not in (None, "", SCALE_API_VERSION):
        raise APIError(400, "BadRequest", f'{kind} in version "{api_version}" cannot be handled as '
                       "a Scale: expected autoscaling/v1 Scale")
