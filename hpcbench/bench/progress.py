"""Progress of one sweep point in the job log: requests done and current output tokens/s.

A tqdm bar on a terminal; on a log file (not a TTY) plain lines every few seconds, because carriage
return updates turn a log into one unreadable line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class PointProgress:
    def __init__(self, label: str, total: int, file: TextIO | None = None, interval_s: float = 5.0) -> None:
        self.label, self.total = label, total
        self.file = file or sys.stderr
        self.interval = interval_s
        self.done = self.failed = self.tokens = 0
        self.t0 = self._last = time.monotonic()
        self._tokens_at_last = 0
        self._bar = None
        if getattr(self.file, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, file=self.file, mininterval=interval_s / 5,
                             unit="req", dynamic_ncols=True)

    def update(self, output_tokens: int | None, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        self.tokens += output_tokens or 0
        if self._bar is not None:
            self._bar.update(1)
        now = time.monotonic()
        if now - self._last >= self.interval:
            rate = (self.tokens - self._tokens_at_last) / (now - self._last)
            self._last, self._tokens_at_last = now, self.tokens
            if self._bar is not None:
                self._bar.set_postfix_str(f"{rate:.0f} out tok/s", refresh=False)
            else:
                self._line(f"{rate:.0f} out tok/s")

    def close(self) -> None:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        if self._bar is not None:
            self._bar.close()
        self._line(f"{self.tokens / elapsed:.0f} out tok/s average, done", final=True)

    def _line(self, rate: str, final: bool = False) -> None:
        fail = f", {self.failed} failed" if self.failed else ""
        if self._bar is not None and not final:
            return
        print(f"[{self.label}] {self.done}/{self.total} requests{fail}, {rate}", file=self.file, flush=True)
