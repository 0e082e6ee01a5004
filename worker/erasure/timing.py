"""Wall-clock seconds of the parts of a stage, right on a GPU.

CUDA work is asynchronous: the clock is read only after the device has finished what was queued,
which costs one synchronisation per lap (a lap is a whole pass, not a step).
"""

from __future__ import annotations

import time

import torch


class StageClock:
    """Adds the seconds since the last lap to `timings[name]`; does nothing without `timings`."""

    def __init__(self, device: torch.device, timings: dict[str, float] | None) -> None:
        self.device, self.timings = device, timings
        self.started = self._now()

    def lap(self, name: str) -> None:
        if self.timings is None:
            return
        now = self._now()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.started
        self.started = now

    def _now(self) -> float:
        if self.timings is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()
