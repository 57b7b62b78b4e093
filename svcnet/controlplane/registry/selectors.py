"""Label and field selectors, parsed and matched the way kube-apiserver does.

Label selectors follow k8s.io/apimachinery `pkg/labels/selector.go`: a small lexer
(identifiers end at whitespace or one of ``=!(),><``; ``in``/``notin`` are keywords only
in operator position), a recursive-descent parser with the same error texts
(``unable to parse requirement: …``, ``found 'x', expected: …``), and
`NewRequirement`'s validation of keys (qualified names) and values (label values).
`label_selector_from_dict` is `metav1.LabelSelectorAsSelector` for the
``matchLabels``/``matchExpressions`` form used by Deployments and others.

Field selectors follow `pkg/fields/selector.go`: comma-separated ``field=value``,
``field==value`` or ``field!=value`` terms with backslash escapes for ``\\``, ``,`` and
``=``, checked against the field labels a kind supports (its field-label conversion).
Values are read from the object by dotted path; a missing field reads as "" as it does
in the per-kind ``*ToSelectableFields`` functions.

Every parse error raises `APIError` 400 BadRequest, which the HTTP layer returns as is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from svcnet.controlplane.errors import APIError, bad_request

__all__ = [
    "Requirement", "LabelSelector", "FieldRequirement", "FieldSelector",
    "parse_label_selector", "label_selector_from_dict", "selector_from_set",
    "parse_field_selector", "field_value", "validate_qualified_name", "validate_label_value",
    "DEFAULT_FIELD_SELECTORS",
]

DEFAULT_FIELD_SELECTORS: tuple[str, ...] = ("metadata.name", "metadata.namespace")


class Op(str, Enum):
    """`selection.Operator` values, spelled as kube spells them."""

    IN = "in"
    NOT_IN = "notin"
    EQUALS = "="
    DOUBLE_EQUALS = "=="
    NOT_EQUALS = "!="
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GT = "gt"
    LT = "lt"


# -- validation (k8s.io/apimachinery/pkg/util/validation) -----------------------------

_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QNAME_RE = re.compile(f"^{_QNAME_FMT}$")
_QNAME_MSG = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and "
              "end with an alphanumeric character")
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUBDOMAIN_RE = re.compile(f"^{_DNS1123_SUBDOMAIN_FMT}$")
_DNS1123_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                          "characters, '-' or '.', and must start and end with an alphanumeric "
                          "character")
_LABEL_VALUE_FMT = f"({_QNAME_FMT})?"
_LABEL_VALUE_RE = re.compile(f"^{_LABEL_VALUE_FMT}$")
_LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, "
                    "'-', '_' or '.', and must start and end with an alphanumeric character")


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    # Reproduces validation.RegexError, including its famous double space before "or".
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    text = msg + " (e.g. "
    for i, example in enumerate(examples):
        if i:
            text += " or "
        text += f"'{example}', "
    return text + f"regex used for validation is '{fmt}')"


def validate_qualified_name(value: str) -> list[str]:
    """`validation.IsQualifiedName`: an optional DNS-subdomain prefix and a 63-char name."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            if len(prefix) > 253:
                errs.append("prefix part must be no more than 253 characters")
            if not _DNS1123_SUBDOMAIN_RE.match(prefix):
                errs.append("prefix part " + _regex_error(
                    _DNS1123_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com"))
    else:
        return ["a qualified name " + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name",
                                                    "123-abc")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part must be no more than 63 characters")
    if not _QNAME_RE.match(name):
        errs.append("name part " + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name",
                                                 "123-abc"))
    return errs


def validate_label_value(value: str) -> list[str]:
    """`validation.IsValidLabelValue`."""
    errs: list[str] = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _LABEL_VALUE_RE.match(value):
        errs.append(_regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


def _go_quote(value: str) -> str:
    """Go's %q for the plain strings selectors contain."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _invalid(path: str, value: str, detail: str) -> str:
    """field.Invalid(...).Error(); kube passes a nil path for keys, printed `<nil>`."""
    return f"{path}: Invalid value: {_go_quote(value)}: {detail}"


# -- label selectors ---------------------------------------------------------------------

@dataclass(frozen=True)
class Requirement:
    """One term of a label selector: key, operator and (sorted, de-duplicated) values."""

    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op in (Op.IN, Op.EQUALS, Op.DOUBLE_EQUALS):
            return self.key in labels and labels[self.key] in self.values
        if self.op in (Op.NOT_IN, Op.NOT_EQUALS):
            return self.key not in labels or labels[self.key] not in self.values
        if self.op is Op.EXISTS:
            return self.key in labels
        if self.op is Op.DOES_NOT_EXIST:
            return self.key not in labels
        # gt / lt: the label must exist and parse as an integer (as in Requirement.Matches).
        if self.key not in labels:
            return False
        try:
            have, want = int(labels[self.key]), int(self.values[0])
        except ValueError:
            return False
        return have > want if self.op is Op.GT else have < want

    def __str__(self) -> str:
        if self.op is Op.DOES_NOT_EXIST:
            return "!" + self.key
        if self.op is Op.EXISTS:
            return self.key
        if self.op in (Op.IN, Op.NOT_IN):
            return f"{self.key} {self.op.value} ({','.join(self.values)})"
        symbol = {Op.GT: ">", Op.LT: "<"}.get(self.op, self.op.value)
        return f"{self.key}{symbol}{self.values[0]}"


@dataclass(frozen=True)
class LabelSelector:
    """A conjunction of requirements. ``nothing=True`` is `labels.Nothing()`."""

    requirements: tuple[Requirement, ...] = ()
    nothing: bool = False

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.nothing:
            return False
        have = labels or {}
        return all(r.matches(have) for r in self.requirements)

    def empty(self) -> bool:
        """True when the selector selects everything."""
        return not self.nothing and not self.requirements

    def equality_value(self, key: str) -> str | None:
        """The value `key` is pinned to by `key=v`/`key==v`/`key in (v)`, for index look-ups
        (e.g. EndpointSlices by kubernetes.io/service-name)."""
        for r in self.requirements:
            if r.key == key and r.op in (Op.EQUALS, Op.DOUBLE_EQUALS, Op.IN) and len(r.values) == 1:
                return r.values[0]
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def new_requirement(key: str, op: Op, values: Iterable[str], *, key_path: str = "key") -> Requirement:
    """`labels.NewRequirement`: validates key and values and raises APIError 400."""
    vals = list(values)
    errs: list[str] = []
    key_errs = validate_qualified_name(key)
    if key_errs:
        errs.append(_invalid(key_path, key, "; ".join(key_errs)))
    if op in (Op.IN, Op.NOT_IN):
        if not vals:
            errs.append("values: Invalid value: []string{}: for 'in', 'notin' operators, "
                        "values set can't be empty")
    elif op in (Op.EQUALS, Op.DOUBLE_EQUALS, Op.NOT_EQUALS):
        if len(vals) != 1:
            errs.append("values: Invalid value: " + _go_list(vals)
                        + ": exact-match compatibility requires one single value")
    elif op in (Op.EXISTS, Op.DOES_NOT_EXIST):
        if vals:
            errs.append("values: Invalid value: " + _go_list(vals)
                        + ": values set must be empty for exists and does not exist")
    elif op in (Op.GT, Op.LT):
        if len(vals) != 1:
            errs.append("values: Invalid value: " + _go_list(vals)
                        + ": for 'Gt', 'Lt' operators, exactly one value is required")
        for i, v in enumerate(vals):
            if not re.fullmatch(r"[+-]?[0-9]+", v):
                errs.append(_invalid(f"values[{i}]", v,
                                     "for 'Gt', 'Lt' operators, the value must be an integer"))
    for i, v in enumerate(vals):
        v_errs = validate_label_value(v)
        if v_errs:
            errs.append(_invalid(f"values[{i}][{key}]", v, "; ".join(v_errs)))
    if errs:
        raise bad_request(errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]")
    return Requirement(key, op, tuple(sorted(set(vals))))


def _go_list(vals: list[str]) -> str:
    return "[]string{" + ", ".join(_go_quote(v) for v in vals) + "}"


class _Tok(Enum):
    ERROR = 0
    EOS = 1
    CLOSED_PAR = 2
    COMMA = 3
    DOES_NOT_EXIST = 4
    DOUBLE_EQUALS = 5
    EQUALS = 6
    GT = 7
    IDENTIFIER = 8
    IN = 9
    LT = 10
    NOT_EQUALS = 11
    NOT_IN = 12
    OPEN_PAR = 13


_STRING2TOKEN = {
    ")": _Tok.CLOSED_PAR, ",": _Tok.COMMA, "!": _Tok.DOES_NOT_EXIST, "==": _Tok.DOUBLE_EQUALS,
    "=": _Tok.EQUALS, ">": _Tok.GT, "in": _Tok.IN, "<": _Tok.LT, "!=": _Tok.NOT_EQUALS,
    "notin": _Tok.NOT_IN, "(": _Tok.OPEN_PAR,
}
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")
_BINARY_OPERATORS = "in, notin, =, ==, !=, gt, lt"


def _lex(text: str) -> list[tuple[_Tok, str]]:
    """All tokens of `text`, ending with EOS (the parser pre-scans like kube's)."""
    out: list[tuple[_Tok, str]] = []
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= n:
            out.append((_Tok.EOS, ""))
            return out
        if text[pos] in _SPECIAL:
            buffer, last = "", None
            while pos < n and text[pos] in _SPECIAL:
                buffer += text[pos]
                if buffer in _STRING2TOKEN:
                    last = (_STRING2TOKEN[buffer], buffer)
                    pos += 1
                elif last is not None:
                    break
                else:
                    pos += 1
            out.append(last if last is not None
                       else (_Tok.ERROR, f"error expected: keyword found '{buffer}'"))
        else:
            start = pos
            while pos < n and text[pos] not in _SPECIAL and text[pos] not in _WHITESPACE:
                pos += 1
            word = text[start:pos]
            out.append((_STRING2TOKEN.get(word, _Tok.IDENTIFIER), word))


class _Parser:
    """`labels.Parser`: in "values" context the keywords in/notin are identifiers."""

    def __init__(self, text: str) -> None:
        self.items = _lex(text)
        self.pos = 0

    def _at(self, values_ctx: bool, advance: bool) -> tuple[_Tok, str]:
        tok, lit = self.items[min(self.pos, len(self.items) - 1)]
        if advance:
            self.pos += 1
        if values_ctx and tok in (_Tok.IN, _Tok.NOT_IN):
            tok = _Tok.IDENTIFIER
        return tok, lit

    def lookahead(self, values_ctx: bool = True) -> tuple[_Tok, str]:
        return self._at(values_ctx, False)

    def consume(self, values_ctx: bool = True) -> tuple[_Tok, str]:
        return self._at(values_ctx, True)

    def parse(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        while True:
            tok, lit = self.lookahead()
            if tok in (_Tok.IDENTIFIER, _Tok.DOES_NOT_EXIST):
                try:
                    reqs.append(self.requirement())
                except _ParseError as err:
                    raise _ParseError(f"unable to parse requirement: {err}") from None
                except APIError as err:
                    raise _ParseError(f"unable to parse requirement: {err.message}") from None
                tok, lit = self.consume()
                if tok is _Tok.EOS:
                    return reqs
                if tok is _Tok.COMMA:
                    tok2, lit2 = self.lookahead()
                    if tok2 not in (_Tok.IDENTIFIER, _Tok.DOES_NOT_EXIST):
                        raise _ParseError(f"found '{lit2}', expected: identifier after ','")
                    continue
                raise _ParseError(f"found '{lit}', expected: ',' or 'end of string'")
            if tok is _Tok.EOS:
                return reqs
            raise _ParseError(f"found '{lit}', expected: !, identifier, or 'end of string'")

    def requirement(self) -> Requirement:
        op: Op | None = None
        tok, lit = self.consume()
        if tok is _Tok.DOES_NOT_EXIST:
            op = Op.DOES_NOT_EXIST
            tok, lit = self.consume()
        if tok is not _Tok.IDENTIFIER:
            raise _ParseError(f"found '{lit}', expected: identifier")
        key = lit
        key_errs = validate_qualified_name(key)
        if key_errs:
            raise _ParseError(_invalid("<nil>", key, "; ".join(key_errs)))
        if self.lookahead()[0] in (_Tok.EOS, _Tok.COMMA) and op is None:
            op = Op.EXISTS
        if op is not None:
            return new_requirement(key, op, ())
        tok, lit = self.consume(values_ctx=False)
        op = {
            _Tok.IN: Op.IN, _Tok.EQUALS: Op.EQUALS, _Tok.DOUBLE_EQUALS: Op.DOUBLE_EQUALS,
            _Tok.GT: Op.GT, _Tok.LT: Op.LT, _Tok.NOT_IN: Op.NOT_IN, _Tok.NOT_EQUALS: Op.NOT_EQUALS,
        }.get(tok)
        if op is None:
            raise _ParseError(f"found '{lit}', expected: {_BINARY_OPERATORS}")
        values = self.set_values() if op in (Op.IN, Op.NOT_IN) else self.exact_value()
        return new_requirement(key, op, values)

    def set_values(self) -> set[str]:
        tok, lit = self.consume()
        if tok is not _Tok.OPEN_PAR:
            raise _ParseError(f"found '{lit}' expected: '('")
        tok, lit = self.lookahead()
        if tok in (_Tok.IDENTIFIER, _Tok.COMMA):
            values = self.identifiers()
            if self.consume()[0] is not _Tok.CLOSED_PAR:
                raise _ParseError(f"found '{lit}', expected: ')'")
            return values
        if tok is _Tok.CLOSED_PAR:  # "()" is the set holding the empty string
            self.consume()
            return {""}
        raise _ParseError(f"found '{lit}', expected: ',', ')' or identifier")

    def identifiers(self) -> set[str]:
        values: set[str] = set()
        while True:
            tok, lit = self.consume()
            if tok is _Tok.IDENTIFIER:
                values.add(lit)
                tok2, lit2 = self.lookahead()
                if tok2 is _Tok.COMMA:
                    continue
                if tok2 is _Tok.CLOSED_PAR:
                    return values
                raise _ParseError(f"found '{lit2}', expected: ',' or ')'")
            if tok is _Tok.COMMA:  # "(," ",)" and ",," each stand for the empty value
                if not values:
                    values.add("")
                tok2, _ = self.lookahead()
                if tok2 is _Tok.CLOSED_PAR:
                    values.add("")
                    return values
                if tok2 is _Tok.COMMA:
                    self.consume()
                    values.add("")
                continue
            raise _ParseError(f"found '{lit}', expected: ',', or identifier")

    def exact_value(self) -> set[str]:
        tok, _ = self.lookahead()
        if tok in (_Tok.EOS, _Tok.COMMA):
            return {""}
        tok, lit = self.consume()
        if tok is _Tok.IDENTIFIER:
            return {lit}
        raise _ParseError(f"found '{lit}', expected: identifier")


class _ParseError(Exception):
    pass


def parse_label_selector(text: str) -> LabelSelector:
    """`labels.Parse`. "" selects everything. Raises APIError 400 on bad input."""
    try:
        reqs = _Parser(text).parse()
    except _ParseError as err:
        raise bad_request(str(err)) from None
    return LabelSelector(tuple(sorted(reqs, key=lambda r: r.key)))


def selector_from_set(labels: Mapping[str, str] | None) -> LabelSelector:
    """`labels.SelectorFromSet` (a Service's spec.selector). An empty set selects
    everything; callers that treat an empty selector as "none" check that themselves."""
    reqs = [new_requirement(k, Op.EQUALS, (v,)) for k, v in (labels or {}).items()]
    return LabelSelector(tuple(sorted(reqs, key=lambda r: r.key)))


_EXPR_OPS = {"In": Op.IN, "NotIn": Op.NOT_IN, "Exists": Op.EXISTS, "DoesNotExist": Op.DOES_NOT_EXIST}


def label_selector_from_dict(sel: Mapping[str, Any] | None) -> LabelSelector:
    """`metav1.LabelSelectorAsSelector`: None selects nothing, {} selects everything."""
    if sel is None:
        return LabelSelector(nothing=True)
    match_labels = sel.get("matchLabels") or {}
    exprs = sel.get("matchExpressions") or []
    if not isinstance(match_labels, Mapping) or not isinstance(exprs, list):
        raise bad_request("invalid label selector: matchLabels must be a map and "
                          "matchExpressions a list")
    reqs = [new_requirement(str(k), Op.EQUALS, (str(v),)) for k, v in match_labels.items()]
    for expr in exprs:
        if not isinstance(expr, Mapping):
            raise bad_request(f"invalid label selector expression: {expr!r}")
        op_name = expr.get("operator", "")
        op = _EXPR_OPS.get(op_name)
        if op is None:
            raise bad_request(f"{_go_quote(str(op_name))} is not a valid label selector operator")
        reqs.append(new_requirement(str(expr.get("key", "")), op,
                                    [str(v) for v in expr.get("values") or []]))
    return LabelSelector(tuple(reqs))


# -- field selectors ---------------------------------------------------------------------

# Field labels whose value is not at the same dotted path in the object
# (core/v1 EventToSelectableFields: "source" is source.component).
_FIELD_PATHS = {"source": "source.component"}


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    negate: bool = False

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (field_value(obj, self.field) == self.value) != self.negate

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")
        return f"{self.field}{'!=' if self.negate else '='}{escaped}"


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = field(default_factory=tuple)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(r.matches(obj) for r in self.requirements)

    def empty(self) -> bool:
        return not self.requirements

    def equality_value(self, name: str) -> str | None:
        """The value `name` must equal (e.g. metadata.name for a single-object watch)."""
        for r in self.requirements:
            if r.field == name and not r.negate:
                return r.value
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def field_value(obj: Mapping[str, Any], name: str) -> str:
    """The selectable value of a field label: missing reads "", booleans "true"/"false"."""
    cur: Any = obj
    for part in _FIELD_PATHS.get(name, name).split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
        if cur is None:
            return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, list):  # status.podIPs: kube selects on the first (primary) IP
        first = cur[0] if cur else ""
        return str(first.get("ip", "")) if isinstance(first, Mapping) else str(first)
    return str(cur)


def _split_terms(text: str) -> list[str]:
    """fields.splitTerms: split on commas not escaped by a backslash."""
    terms, cur, escaped = [], [], False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == ",":
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return terms


def _unescape(value: str) -> str:
    out, escaped = [], False
    for ch in value:
        if escaped:
            if ch not in "\\,=":
                raise bad_request(f"invalid escape sequence: \\{ch}")
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",=":
            raise bad_request(f"invalid field selector: unescaped character in value: {ch}")
        else:
            out.append(ch)
    if escaped:
        raise bad_request("invalid escape sequence: \\")
    return "".join(out)


def parse_field_selector(text: str, supported: Iterable[str] = DEFAULT_FIELD_SELECTORS
                         ) -> FieldSelector:
    """`fields.ParseSelector` plus the kind's field-label conversion.

    An unsupported field gives kube's text for it: kinds that only support the metadata
    pair use `runtime.DefaultMetaV1FieldSelectorConversion` (`"x" is not a known field
    selector: only "metadata.name", "metadata.namespace"`); kinds with their own
    conversion function (Pod, Event, Node, Namespace, ...) say `field label not supported: x`.
    """
    allowed = tuple(supported)
    reqs: list[FieldRequirement] = []
    for term in sorted(_split_terms(text)):
        if term == "":
            continue
        split = _split_term(term)
        if split is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        lhs, op, rhs = split
        value = _unescape(rhs)
        if lhs not in allowed:
            if set(allowed) == set(DEFAULT_FIELD_SELECTORS):
                raise bad_request(f'"{lhs}" is not a known field selector: only '
                                  '"metadata.name", "metadata.namespace"')
            raise bad_request(f"field label not supported: {lhs}")
        reqs.append(FieldRequirement(lhs, value, negate=(op == "!=")))
    return FieldSelector(tuple(reqs))


def _split_term(term: str) -> tuple[str, str, str] | None:
    for i in range(len(term)):
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op):]
    return None
