"""Shared test set-up: the `root` marker skips cleanly without root, and helpers
for network namespaces that every integration test creates and always removes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers importable as `helpers`


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--keep-artifacts", action="store_true",
                     help="keep per-test artifacts (nft dumps, logs) even when tests pass")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real network namespaces")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
