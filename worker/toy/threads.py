"""Choosing torch's thread count by timing real training steps.

When another process keeps a core busy, every multi-threaded operation waits for its slowest
thread and a step can take ten times as long as on one thread; so the faster setting is measured
at the start of each phase and again now and then.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


class ThreadChooser:
    """Alternates between one thread and `most` threads, keeping the faster."""

    def __init__(self, most: int, every_seconds: float = 600.0, fixed: bool = False):
        self.most, self.every, self.fixed = most, every_seconds, fixed or most == 1
        self.checked_at: float | None = None
        self.current = most
        torch.set_num_threads(most)

    def due(self) -> bool:
        return not self.fixed and (
            self.checked_at is None or time.monotonic() - self.checked_at > self.every
        )

    def choose(self, step: Callable[[], float], steps_each: int = 3) -> tuple[list[float], dict]:
        """Run `step` under each setting (one untimed warm-up, then `steps_each` timed) and keep
        the faster; returns the steps' losses and the seconds per step of each setting."""
        losses, timings = [], {}
        for threads in (self.most, 1):
            torch.set_num_threads(threads)
            losses.append(step())
            started = time.monotonic()
            losses.extend(step() for _ in range(steps_each))
            timings[threads] = (time.monotonic() - started) / steps_each
        self.current = min(timings, key=timings.get)
        torch.set_num_threads(self.current)
        self.checked_at = time.monotonic()
        return losses, timings
