"""Label and field selector parsing, matching and kube-apiserver's error texts."""

from __future__ import annotations

from typing import Any

import pytest

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry.selectors import (
    label_selector_from_dict, parse_field_selector, parse_label_selector, selector_from_set,
)

POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase",
              "status.podIP", "spec.hostNetwork")


@pytest.mark.parametrize("text, labels, want", [
    pytest.param("", {"a": "b"}, True, id="empty-selects-all"),
    pytest.param("app=web", {"app": "web"}, True, id="equals"),
    pytest.param("app==web", {"app": "web"}, True, id="double-equals"),
    pytest.param("app=web", {"app": "db"}, False, id="equals-other-value"),
    pytest.param("app=web", {}, False, id="equals-missing"),
    pytest.param("app!=web", {}, True, id="not-equals-missing-matches"),
    pytest.param("app!=web", {"app": "web"}, False, id="not-equals"),
    pytest.param("env in (prod, qa)", {"env": "qa"}, True, id="in"),
    pytest.param("env in (prod,qa)", {"env": "dev"}, False, id="in-miss"),
    pytest.param("env notin (prod,qa)", {"env": "dev"}, True, id="notin"),
    pytest.param("env notin (prod,qa)", {}, True, id="notin-missing"),
    pytest.param("env notin (prod,qa)", {"env": "prod"}, False, id="notin-hit"),
    pytest.param("env", {"env": ""}, True, id="exists"),
    pytest.param("env", {}, False, id="exists-missing"),
    pytest.param("!env", {}, True, id="not-exists"),
    pytest.param("!env", {"env": "x"}, False, id="not-exists-present"),
    pytest.param("a=b, !c ,d in (e)", {"a": "b", "d": "e"}, True, id="and-with-spaces"),
    pytest.param("a=b,!c", {"a": "b", "c": "1"}, False, id="and-fails"),
    pytest.param("in=notin", {"in": "notin"}, True, id="keywords-as-key-and-value"),
    pytest.param("x in ()", {"x": ""}, True, id="empty-parens-is-empty-value"),
    pytest.param("x in (,a)", {"x": ""}, True, id="leading-comma-empty-value"),
    pytest.param("a=", {"a": ""}, True, id="equals-empty-value"),
    pytest.param("replicas>2", {"replicas": "3"}, True, id="gt"),
    pytest.param("replicas<2", {"replicas": "x"}, False, id="lt-non-integer-label"),
    pytest.param("example.com/role=db", {"example.com/role": "db"}, True, id="prefixed-key"),
])
def test_label_selector_matches(text: str, labels: dict[str, str], want: bool) -> None:
    assert parse_label_selector(text).matches(labels) is want


@pytest.mark.parametrize("text, message", [
    pytest.param("a=b,", "found '', expected: identifier after ','", id="trailing-comma"),
    pytest.param("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, "
                 "!=, gt, lt", id="missing-operator"),
    pytest.param("=b", "found '=', expected: !, identifier, or 'end of string'", id="no-key"),
    pytest.param("a in b", "unable to parse requirement: found 'b' expected: '('", id="in-no-parens"),
    pytest.param("a in (b", "unable to parse requirement: found '', expected: ',' or ')'",
                 id="unclosed-paren"),
    pytest.param("a=(b)", "unable to parse requirement: found '(', expected: identifier",
                 id="equals-paren"),
    pytest.param("!a=b", "found '=', expected: ',' or 'end of string'", id="not-with-value"),
    pytest.param("a=b=c", "found '=', expected: ',' or 'end of string'", id="double-assign"),
    pytest.param("a in (b) c", "found 'c', expected: ',' or 'end of string'", id="junk-after-set"),
    pytest.param("a (b)", "unable to parse requirement: found '(', expected: in, notin, =, ==, "
                 "!=, gt, lt", id="paren-after-key"),
    pytest.param("a>b", "unable to parse requirement: values[0]: Invalid value: \"b\": "
                 "for 'Gt', 'Lt' operators, the value must be an integer", id="gt-non-integer"),
    pytest.param("-a=b", "unable to parse requirement: <nil>: Invalid value: \"-a\": name part "
                 "must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                 "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
                 "'123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?"
                 "[A-Za-z0-9]')", id="bad-key"),
    pytest.param("a=-b", "unable to parse requirement: values[0][a]: Invalid value: \"-b\": "
                 "a valid label must be an empty string or consist of alphanumeric characters, "
                 "'-', '_' or '.', and must start and end with an alphanumeric character (e.g. "
                 "'MyValue',  or 'my_value',  or '12345', regex used for validation is "
                 "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')", id="bad-value"),
    pytest.param("Example.com/a=b", "unable to parse requirement: <nil>: Invalid value: "
                 "\"Example.com/a\": prefix part a lowercase RFC 1123 subdomain must consist of "
                 "lower case alphanumeric characters, '-' or '.', and must start and end with an "
                 "alphanumeric character (e.g. 'example.com', regex used for validation is "
                 "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                 id="bad-prefix"),
    pytest.param("a" * 64 + "=b", "unable to parse requirement: <nil>: Invalid value: \""
                 + "a" * 64 + "\": name part must be no more than 63 characters",
                 id="key-too-long"),
])
def test_label_selector_errors(text: str, message: str) -> None:
    with pytest.raises(APIError) as err:
        parse_label_selector(text)
    assert err.value.code == 400 and err.value.reason == "BadRequest"
    assert err.value.message == message


def test_label_selector_string_is_canonical() -> None:
    sel = parse_label_selector("z notin (b,a), a==1,!m,k, y in (q)")
    assert str(sel) == "a==1,k,!m,y in (q),z notin (a,b)"
    assert parse_label_selector(str(sel)) == sel
    assert parse_label_selector("kubernetes.io/service-name=web").equality_value(
        "kubernetes.io/service-name") == "web"


@pytest.mark.parametrize("sel, labels, want", [
    pytest.param(None, {"a": "b"}, False, id="nil-selects-nothing"),
    pytest.param({}, {"a": "b"}, True, id="empty-selects-everything"),
    pytest.param({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"}, True, id="match-labels"),
    pytest.param({"matchLabels": {"app": "web"}}, {"app": "db"}, False, id="match-labels-miss"),
    pytest.param({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}]},
                 {"tier": "be"}, True, id="expr-in"),
    pytest.param({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fe"]}]},
                 {"tier": "fe"}, False, id="expr-notin"),
    pytest.param({"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
                 {"tier": ""}, True, id="expr-exists"),
    pytest.param({"matchLabels": {"a": "b"},
                  "matchExpressions": [{"key": "c", "operator": "DoesNotExist"}]},
                 {"a": "b", "c": "d"}, False, id="labels-and-expr"),
])
def test_label_selector_from_dict(sel: dict[str, Any] | None, labels: dict[str, str],
                                  want: bool) -> None:
    assert label_selector_from_dict(sel).matches(labels) is want


@pytest.mark.parametrize("sel, message", [
    pytest.param({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
                 '"Gt" is not a valid label selector operator', id="bad-operator"),
    pytest.param({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
                 "values: Invalid value: []string{}: for 'in', 'notin' operators, values set "
                 "can't be empty", id="in-without-values"),
    pytest.param({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
                 'values: Invalid value: []string{"x"}: values set must be empty for exists and '
                 "does not exist", id="exists-with-values"),
])
def test_label_selector_from_dict_errors(sel: dict[str, Any], message: str) -> None:
    with pytest.raises(APIError) as err:
        label_selector_from_dict(sel)
    assert err.value.code == 400 and err.value.message == message


def test_selector_from_set() -> None:
    sel = selector_from_set({"app": "web", "tier": "fe"})
    assert str(sel) == "app=web,tier=fe"
    assert sel.matches({"app": "web", "tier": "fe", "x": "1"})
    assert not sel.matches({"app": "web"})


POD = {"metadata": {"name": "web-1", "namespace": "default"},
       "spec": {"nodeName": "node-a", "hostNetwork": False},
       "status": {"phase": "Running", "podIP": "10.244.1.5"}}


@pytest.mark.parametrize("text, want", [
    pytest.param("", True, id="empty"),
    pytest.param("metadata.name=web-1", True, id="name"),
    pytest.param("metadata.name==web-1", True, id="name-double-equals"),
    pytest.param("metadata.name!=web-1", False, id="name-not-equals"),
    pytest.param("spec.nodeName=node-a,status.phase=Running", True, id="and"),
    pytest.param("spec.nodeName=node-b,status.phase=Running", False, id="and-fails"),
    pytest.param("spec.nodeName=", False, id="empty-value-on-set-field"),
    pytest.param("spec.hostNetwork=false", True, id="bool-field"),
    pytest.param("status.podIP!=", True, id="not-empty"),
])
def test_field_selector_matches(text: str, want: bool) -> None:
    assert parse_field_selector(text, POD_FIELDS).matches(POD) is want


def test_field_selector_missing_field_reads_empty() -> None:
    unscheduled = {"metadata": {"name": "p"}, "spec": {}}
    assert parse_field_selector("spec.nodeName=", POD_FIELDS).matches(unscheduled)


def test_field_selector_escapes() -> None:
    sel = parse_field_selector(r"metadata.name=a\,b\=c\\d", POD_FIELDS)
    assert sel.requirements[0].value == "a,b=c\\d"
    assert str(sel) == r"metadata.name=a\,b\=c\\d"


def test_event_source_field() -> None:
    event = {"metadata": {"name": "e"}, "source": {"component": "kubelet"}}
    assert parse_field_selector("source=kubelet", ("source",)).matches(event)


@pytest.mark.parametrize("text, supported, message", [
    pytest.param("spec.foo=x", POD_FIELDS, "field label not supported: spec.foo",
                 id="unsupported-custom-kind"),
    pytest.param("foo.bar=baz", ("metadata.name", "metadata.namespace"),
                 '"foo.bar" is not a known field selector: only "metadata.name", '
                 '"metadata.namespace"', id="unsupported-default-kind"),
    pytest.param("metadata.name", POD_FIELDS,
                 "invalid selector: 'metadata.name'; can't understand 'metadata.name'",
                 id="no-operator"),
    pytest.param(r"metadata.name=a\b", POD_FIELDS, r"invalid escape sequence: \b",
                 id="bad-escape"),
    pytest.param("metadata.name=a=b", POD_FIELDS,
                 "invalid field selector: unescaped character in value: =", id="unescaped-equals"),
])
def test_field_selector_errors(text: str, supported: tuple[str, ...], message: str) -> None:
    with pytest.raises(APIError) as err:
        parse_field_selector(text, supported)
    assert err.value.code == 400 and err.value.message == message
