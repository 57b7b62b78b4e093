"""Reading Kubernetes objects from manifest files: a `List` in JSON or YAML, a single
object, or multi-document YAML. Errors name the file and the document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from svcnet.apiclient.objects import Obj


class ManifestError(ValueError):
    """A manifest file that cannot be read as Kubernetes objects."""


def parse_manifests(text: str, origin: str = "<text>") -> list[Obj]:
    """Every object in `text`, with `List`s flattened, in file order."""
    docs: list[Any]
    stripped = text.lstrip()
    try:
        if stripped.startswith("{") or stripped.startswith("["):
            docs = [json.loads(text)]
        else:
            docs = list(yaml.safe_load_all(text))
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ManifestError(f"{origin}: not valid JSON or YAML: {e}") from None
    objects: list[Obj] = []
    for i, doc in enumerate(docs):
        _collect(doc, f"{origin} (document {i + 1})", objects)
    return objects


def _collect(doc: Any, where: str, out: list[Obj]) -> None:
    if doc is None:
        return
    if isinstance(doc, list):
        for item in doc:
            _collect(item, where, out)
        return
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: expected an object, got {type(doc).__name__}")
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
        for j, item in enumerate(doc.get("items") or []):
            _collect(item, f"{where} item {j}", out)
        return
    if not kind or not doc.get("apiVersion"):
        raise ManifestError(f"{where}: an object needs apiVersion and kind")
    if not (doc.get("metadata") or {}).get("name"):
        raise ManifestError(f"{where}: {kind} has no metadata.name")
    out.append(doc)


def load_manifests(path: str | Path) -> list[Obj]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ManifestError(f"{p}: cannot read: {e.strerror}") from None
    return parse_manifests(text, str(p))
