"""A unique lab name per test (at most 16 characters), as tests/integration/lab does."""

from __future__ import annotations

import itertools
import os

import pytest

_seq = itertools.count()


@pytest.fixture
def lab_name() -> str:
    return f"h{os.getpid() % 100000}x{next(_seq)}"
