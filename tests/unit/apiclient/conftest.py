"""Fixtures: a fake Kubernetes API on a real local socket, a client for it, a fake clock."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

import pytest
from aiohttp.test_utils import TestServer

from svcnet.apiclient.client import RestClient

from .fake_api import FakeApi


class FakeClock:
    """Time that moves only when someone sleeps; sleeps are recorded, never real."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `cond` until true, failing after `timeout` real seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fake() -> AsyncIterator[FakeApi]:
    api = FakeApi()
    server = TestServer(api.app())
    await server.start_server()
    api.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    api.server = server  # type: ignore[attr-defined]
    try:
        yield api
    finally:
        await server.close()


@pytest.fixture
async def client(fake: FakeApi) -> AsyncIterator[RestClient]:
    c = RestClient(fake.url, timeout=5.0)  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        await c.close()
