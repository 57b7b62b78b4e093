from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from svcnet.apiclient.manifests import ManifestError, parse_manifests
from svcnet.apiclient.resources import SERVICES
from svcnet.apiclient.source import FileSource

SVC = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.5}\n"


def test_multi_document_yaml_and_lists() -> None:
    text = SVC + "---\n" + '{"apiVersion":"v1","kind":"List","items":[]}\n'
    assert [o["metadata"]["name"] for o in parse_manifests(SVC + "---\n" + SVC)] == ["web", "web"]
    lst = '{"apiVersion":"v1","kind":"List","items":[' \
          '{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}}]}'
    assert parse_manifests(lst)[0]["metadata"]["name"] == "a"
    assert parse_manifests("---\n") == []
    assert len(parse_manifests(text.split("---")[0])) == 1


@pytest.mark.parametrize("text,message", [
    pytest.param("kind: [", "not valid JSON or YAML", id="bad-yaml"),
    pytest.param("- 1\n", "expected an object", id="scalar-item"),
    pytest.param("kind: Service\nmetadata: {name: a}\n", "needs apiVersion and kind", id="no-apiversion"),
    pytest.param("apiVersion: v1\nkind: Service\n", "has no metadata.name", id="no-name"),
])
def test_bad_manifests_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifests(text, "f.yaml")


async def test_file_source_reloads_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "objects.yaml"
    path.write_text(SVC)
    src = FileSource(path, poll_interval=0.01)
    inf = src.informer(SERVICES)
    task = asyncio.create_task(src.run())
    await inf.wait_for_sync()
    assert inf.get("default/web") is not None
    path.write_text("kind: [")
    await asyncio.sleep(0.1)
    assert inf.get("default/web") is not None  # bad file: last good state stays
    path.write_text(SVC.replace("web", "api"))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if inf.get("default/api"):
            break
    assert inf.keys() == ["default/api"]
    task.cancel()
