"""iptables-mode rulesets and tracers from the same short-form objects as the nftables
unit tests (tests/unit/proxy/builders.py), through the same change tracker."""

from __future__ import annotations

from typing import Any

from svcnet.proxy.iptables import FamilyRuleset, compute_family
from svcnet.proxy.iptables_tracer import IptablesTracer
from tests.unit.proxy.builders import state


def ruleset(objects: list[dict[str, Any]], localhost_nodeports: bool = True, **kw: Any) -> FamilyRuleset:
    return compute_family(state(objects, **kw), localhost_nodeports=localhost_nodeports)


def tracer(objects: list[dict[str, Any]], localhost_nodeports: bool = True, **kw: Any) -> IptablesTracer:
    return IptablesTracer(ruleset(objects, localhost_nodeports, **kw))
