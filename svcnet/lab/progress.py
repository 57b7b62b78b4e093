"""Step-by-step progress in kind's style: ` ✓ Preparing nodes` / ` ✗ …`, with a
spinner only when stderr is a terminal; plain ` • step ...` lines otherwise, so
CI logs stay readable."""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from typing import IO, Iterator

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
GREEN, RED, RESET = "\x1b[32m", "\x1b[31m", "\x1b[0m"


class Status:
    def __init__(self, out: IO[str] | None = None, tty: bool | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Run the body as one step; ✓ when it returns, ✗ when it raises (and re-raise)."""
        stop = threading.Event()
        spinner: threading.Thread | None = None
        if self.tty:
            def spin() -> None:
                for ch in itertools.cycle(SPINNER):
                    if stop.wait(0.1):
                        return
                    self.out.write(f"\r {ch} {title} ")
                    self.out.flush()
            spinner = threading.Thread(target=spin, daemon=True)
            spinner.start()
        else:
            self.line(f" • {title} ...")
        t0 = time.monotonic()
        try:
            yield
        except BaseException:
            self._end(stop, spinner, f"{RED}✗{RESET}" if self.tty else "✗", title, t0)
            raise
        self._end(stop, spinner, f"{GREEN}✓{RESET}" if self.tty else "✓", title, t0)

    def _end(self, stop: threading.Event, spinner: threading.Thread | None, mark: str, title: str,
             t0: float) -> None:
        stop.set()
        if spinner is not None:
            spinner.join()
            self.out.write("\r\x1b[2K")
        self.line(f" {mark} {title}" + ("" if self.tty else f" ({time.monotonic() - t0:.1f}s)"))
