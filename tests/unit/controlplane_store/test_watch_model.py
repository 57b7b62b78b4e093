"""Property test: replaying a selector-filtered watch gives exactly the filtered list.

Random creates, label changes and deletes run against Leases while a watch with a label
selector is open; folding its ADDED/MODIFIED/DELETED events into a map must end equal
to a fresh list with the same selector, resourceVersions included (what every
informer relies on)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svcnet.controlplane.errors import APIError
from svcnet.controlplane.registry import kinds as k
from svcnet.controlplane.registry.store import Registry

op = st.tuples(st.sampled_from(("create", "label", "delete")), st.integers(0, 4),
               st.sampled_from(("a", "b", None)))


async def apply(reg: Registry, verb: str, i: int, team: str | None) -> None:
    name = f"l{i}"
    labels = {"team": team} if team else {}
    try:
        if verb == "create":
            await reg.create(k.LEASES, "default", {"metadata": {"name": name, "labels": labels}})
        elif verb == "label":
            await reg.patch(k.LEASES, "default", name, "application/merge-patch+json",
                            b'{"metadata":{"labels":{"team":%s}}}' % (f'"{team}"'.encode() if team else b"null"))
        else:
            await reg.delete(k.LEASES, "default", name)
    except APIError as err:
        assert err.code in (404, 409)


async def check(before: list[Any], during: list[Any], selector: str) -> None:
    workdir = Path(tempfile.mkdtemp())
    reg = await Registry.open(workdir)
    try:
        await reg.bootstrap("192.0.2.10", 6443)
        for step in before:
            await apply(reg, *step)
        listed = await reg.list(k.LEASES, "default", label_selector=selector)
        seen = {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in listed["items"]}
        stream = reg.watch(k.LEASES, "default", label_selector=selector,
                           resource_version=listed["metadata"]["resourceVersion"])
        await asyncio.gather(*(apply(reg, *step) for step in during))
        target = reg.current_revision
        last = int(listed["metadata"]["resourceVersion"])
        while last < target:
            try:
                typ, obj = await asyncio.wait_for(stream.__anext__(), 0.2)
            except asyncio.TimeoutError:
                break  # the remaining revisions did not touch the selection
            name, rv = obj["metadata"]["name"], obj["metadata"]["resourceVersion"]
            assert int(rv) > last, "events must come in revision order"
            last = int(rv)
            if typ == "DELETED":
                assert name in seen, f"DELETED for {name} that was never in the selection"
                del seen[name]
            else:
                assert (typ == "MODIFIED") == (name in seen), (typ, name, seen)
                seen[name] = rv
        await stream.aclose()
        final = await reg.list(k.LEASES, "default", label_selector=selector)
        assert seen == {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in final["items"]}
    finally:
        await reg.close()
        shutil.rmtree(workdir, ignore_errors=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(op, max_size=8), during=st.lists(op, min_size=1, max_size=12),
       selector=st.sampled_from(("team=a", "team!=a", "team", "!team", "team in (a,b)")))
def test_watch_replays_to_the_list(before: list[Any], during: list[Any], selector: str) -> None:
    asyncio.run(check(before, during, selector))
