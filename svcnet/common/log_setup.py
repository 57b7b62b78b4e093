"""Logging set-up shared by every command: one line per record, with a context
prefix (the node or component) the way faucet prefixes its dpid."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(component: str, context: str = "", verbosity: int = 0) -> None:
    """Configure the root logger. `verbosity` 0 = INFO, 1+ = DEBUG; SVCNET_LOG_LEVEL overrides."""
    level_name = os.environ.get("SVCNET_LOG_LEVEL")
    level = getattr(logging, level_name.upper(), logging.INFO) if level_name else (
        logging.DEBUG if verbosity > 0 else logging.INFO
    )
    prefix = f"{component}[{context}]" if context else component
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname).1s {prefix} %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log is one line per request: too loud for INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
