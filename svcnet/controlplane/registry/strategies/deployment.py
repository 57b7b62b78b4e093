"""Deployments (apps/v1): stored and validated; svcnet's deployment controller runs them."""

from __future__ import annotations

from typing import Any

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry.selectors import label_selector_from_dict
from svcnet.controlplane.registry.strategies.base import Obj, Strategy
from svcnet.controlplane.registry.strategies.pod import default_pod_spec, validate_pod_spec
from svcnet.controlplane.registry.strategies.validation import (
    FieldError, forbidden, invalid_value, labels, required, unsupported,
)

STRATEGIES = ("RollingUpdate", "Recreate")


class DeploymentStrategy(Strategy):
    tracks_generation = True

    def initial_status(self, obj: Obj) -> dict[str, Any] | None:
        return {}

    def default(self, obj: Obj) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return
        if spec.get("replicas") is None:
            spec["replicas"] = 1
        strat = spec.get("strategy")
        if not isinstance(strat, dict):
            strat = spec["strategy"] = {}
        strat.setdefault("type", "RollingUpdate")
        if strat["type"] == "RollingUpdate":
            ru = strat.get("rollingUpdate")
            if not isinstance(ru, dict):
                ru = strat["rollingUpdate"] = {}
            ru.setdefault("maxUnavailable", "25%")
            ru.setdefault("maxSurge", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        template = spec.get("template")
        if isinstance(template, dict) and isinstance(template.get("spec"), dict):
            default_pod_spec(template["spec"])

    def validate(self, obj: Obj) -> list[FieldError]:
        errs = self.validate_meta(obj)
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return errs + [required("spec")]
        replicas = spec.get("replicas")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            errs.append(invalid_value("spec.replicas", replicas, "must be greater than or equal to 0"))
        sel = spec.get("selector")
        template = spec.get("template")
        tmpl_labels = ((template or {}).get("metadata") or {}).get("labels") or {}
        if not isinstance(sel, dict) or not (sel.get("matchLabels") or sel.get("matchExpressions")):
            errs.append(required("spec.selector"))
        else:
            try:
                selector = label_selector_from_dict(sel)
            except APIError as err:
                errs.append(invalid_value("spec.selector", sel, err.message))
            else:
                if not selector.matches(tmpl_labels):
                    errs.append(invalid_value("spec.template.metadata.labels", tmpl_labels,
                                              "`selector` does not match template `labels`"))
        if not isinstance(template, dict):
            errs.append(required("spec.template"))
        else:
            errs += labels("spec.template.metadata.labels", tmpl_labels)
            pod_spec = template.get("spec")
            errs += validate_pod_spec(pod_spec, "spec.template.spec")
            if isinstance(pod_spec, dict) and pod_spec.get("restartPolicy") not in (None, "Always"):
                errs.append(unsupported("spec.template.spec.restartPolicy",
                                        pod_spec.get("restartPolicy"), ("Always",)))
        strat = (spec.get("strategy") or {}).get("type")
        if strat not in STRATEGIES:
            errs.append(unsupported("spec.strategy.type", strat, STRATEGIES))
        elif strat == "Recreate" and (spec.get("strategy") or {}).get("rollingUpdate"):
            errs.append(forbidden("spec.strategy.rollingUpdate",
                                  "may not be specified when strategy `type` is 'Recreate'"))
        return errs

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        ns, os_ = new.get("spec") or {}, old.get("spec") or {}
        if ns.get("selector") != os_.get("selector"):
            return [invalid_value("spec.selector", ns.get("selector"), "field is immutable")]
        return []
