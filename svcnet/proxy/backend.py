"""The seam between the proxy engine and a packet-filter backend.

The engine (proxier.py) owns informers, change tracking, rate limiting, conntrack
cleanup, health and metrics. A backend owns exactly three things:

* `compute(states, previous, changed)`: the whole desired ruleset as plain data from
  one `ProxyState` per IP family. Pure: no kernel, no clock. `previous` and
  `changed` (the ServicePortNames whose Service or slices changed) let a backend
  reuse the unchanged services' fragments; `changed=None` means "recompute all".
* `write(ruleset, full)`: make the kernel match `ruleset` in one atomic step. A full
  write must not depend on what the backend believes is programmed; a partial
  write may send only the difference against the last good ruleset. On failure it
  raises `BackendError`, keeps the last good rules, and the engine forces the next
  sync to be full.
* `cleanup()`: remove everything this backend ever programmed, and nothing else;
  returns a description of what it removed (empty: nothing was there). The command
  calls it for both modes on `--cleanup`, and for the other mode at startup, so
  switching `--proxy-mode` leaves no rules of the old mode behind (kube-proxy does
  the same).

`render(ruleset)` returns the text `--dry-run` prints (the backend's own load
format: an `nft -f` script or an `iptables-restore` payload).

A backend module `svcnet.proxy.<mode>` exposes `create_backend(options)`; the
command imports it by the `--proxy-mode` name, so the iptables backend plugs in
without the engine knowing it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from svcnet.proxy.model import ProxyState, ServicePortName

MODES = ("nftables", "iptables")


class BackendError(RuntimeError):
    """A write or cleanup that the kernel refused; the previous rules stay in place."""


@dataclass(frozen=True)
class BackendOptions:
    families: tuple[int, ...] = (4, 6)
    localhost_nodeports: bool = True  # iptables mode only
    nft_binary: str = "nft"


@dataclass(frozen=True)
class WriteStats:
    full: bool
    ops: int  # statements / lines sent to the kernel (0 = nothing to do)
    seconds: float


class Backend(Protocol):
    mode: str

    def compute(
        self,
        states: Mapping[int, ProxyState],
        previous: Any | None = None,
        changed: frozenset[ServicePortName] | None = None,
    ) -> Any: ...

    def render(self, ruleset: Any) -> str: ...

    def write(self, ruleset: Any, full: bool) -> WriteStats: ...

    def cleanup(self) -> list[str]: ...


class Writer(Protocol):
    """The kernel side of a backend (nft_writer.NftWriter, iptables_restore.RestoreWriter)."""

    def write(self, ruleset: Any, full: bool) -> WriteStats: ...

    def cleanup(self) -> list[str]: ...


class PerFamilyBackend:
    """What both backends share: the ruleset is one table per IP family (`.tables`,
    each with `.family`), computed family by family from that family's table of the
    previous ruleset, rendered by the ruleset itself, and written and cleaned up by a
    `Writer`. A mode supplies `compute_table` and `assemble`."""

    mode: str

    def __init__(self, options: BackendOptions, writer: Writer) -> None:
        self.options = options
        self.writer = writer

    def compute_table(self, state: ProxyState, previous: Any | None,
                      changed: frozenset[ServicePortName] | None) -> Any:
        raise NotImplementedError

    def assemble(self, tables: tuple[Any, ...]) -> Any:
        raise NotImplementedError

    def compute(
        self,
        states: Mapping[int, ProxyState],
        previous: Any | None = None,
        changed: frozenset[ServicePortName] | None = None,
    ) -> Any:
        tables = []
        for family in sorted(states):
            old = next((t for t in previous.tables if t.family == family), None) if previous is not None else None
            tables.append(self.compute_table(states[family], old, changed))
        return self.assemble(tuple(tables))

    def render(self, ruleset: Any) -> str:
        text: str = ruleset.render()
        return text

    def write(self, ruleset: Any, full: bool) -> WriteStats:
        return self.writer.write(ruleset, full)

    def cleanup(self) -> list[str]:
        return self.writer.cleanup()


def load_backend(mode: str, options: BackendOptions) -> Backend:
    """Import `svcnet.proxy.<mode>` and build its backend; a clear error when absent."""
    if mode not in MODES:
        raise BackendError(f"unknown --proxy-mode {mode!r}: choose one of {', '.join(MODES)}")
    try:
        module = importlib.import_module(f"svcnet.proxy.{mode}")
    except ModuleNotFoundError as e:
        if e.name != f"svcnet.proxy.{mode}":
            raise
        raise BackendError(
            f"--proxy-mode {mode}: this build of svcnet has no {mode} backend "
            f"(module svcnet.proxy.{mode} is missing); use --proxy-mode nftables"
        ) from None
    backend: Backend = module.create_backend(options)
    return backend
