"""The order in which queued fits start: round-robin across sessions, first-come within one.

Every session (and every batch) is a *lane*. The next fit to start is the oldest fit of the
lane that was served least recently, so a session with one small fit waits for at most one
fit of every other session, however many those have queued, and a batch of fifty images
takes its turn like one more session. Pure bookkeeping: no threads, no clocks; the job
registry (``droplet_core.service.jobs``) holds the lock around it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

from droplet_core.settings import FitSettings

# Seconds a fit of the default step count takes on 2 CPU cores (the demo scene and the
# example image at its automatic downscale), before the queue has timed fits of its own.
_DEFAULT_SECONDS_AT_DEFAULT_STEPS = {"gaussian": 8.0, "templates": 15.0, "neural": 40.0}
_APPEARANCE_REUSE_SECONDS = 4.0
_DEFAULT_STEPS = FitSettings().steps
# Lanes are remembered (with when they were last served) until this many exist.
_MAX_IDLE_LANES = 256


def estimated_seconds(settings: FitSettings, seconds_per_step: dict[str, float] | None = None) -> float:
    """A rough duration of a fit, for "about N s to wait": by model, proportional to steps.

    Parameters
    ----------
    settings : the fit's settings.
    seconds_per_step : measured seconds per step by model name (from fits this server
        finished); the built-in guesses for models not in it.
    """
    if settings.appearance_from is not None:
        return _APPEARANCE_REUSE_SECONDS
    measured = (seconds_per_step or {}).get(settings.model)
    if measured is not None:
        return measured * settings.steps
    return _DEFAULT_SECONDS_AT_DEFAULT_STEPS[settings.model] * settings.steps / _DEFAULT_STEPS


@dataclass
class _Lane:
    items: deque
    served_at: int  # dispatch number of this lane's last start (0: never served)
    opened_at: int  # enqueue number when the lane first held an item


class FairQueue:
    """Queued items in lanes; ``pop`` gives them out round-robin across lanes.

    Items are any hashable objects (the registry's jobs); each is in at most one lane.
    """

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane] = {}
        self._dispatched = 0
        self._enqueued = 0

    def __len__(self) -> int:
        return sum(len(lane.items) for lane in self._lanes.values())

    def __contains__(self, item: Hashable) -> bool:
        return any(item in lane.items for lane in self._lanes.values())

    def push(self, lane: str, item: Hashable) -> None:
        """Queue ``item`` at the end of ``lane``."""
        self._enqueued += 1
        entry = self._lanes.get(lane)
        if entry is None:
            if len(self._lanes) >= _MAX_IDLE_LANES:
                # Forget idle sessions; one that comes back counts as never served.
                self._lanes = {name: kept for name, kept in self._lanes.items() if kept.items}
            entry = self._lanes[lane] = _Lane(deque(), 0, self._enqueued)
        entry.items.append(item)

    def remove(self, item: Hashable) -> bool:
        """Take ``item`` out of the queue; False if it was not queued."""
        for lane in self._lanes.values():
            if item in lane.items:
                lane.items.remove(item)
                return True
        return False

    def pop(self) -> Hashable | None:
        """The item to start next (and count its lane as served), or None when empty."""
        name = self._next_lane(self._lanes)
        if name is None:
            return None
        lane = self._lanes[name]
        item = lane.items.popleft()
        self._dispatched += 1
        lane.served_at = self._dispatched
        return item

    def queued(self, lane: str) -> int:
        """How many items ``lane`` has queued."""
        entry = self._lanes.get(lane)
        return len(entry.items) if entry else 0

    def order(self) -> Iterator[Hashable]:
        """Every queued item in the order ``pop`` would give them out (nothing is changed)."""
        lanes = {name: _Lane(deque(lane.items), lane.served_at, lane.opened_at) for name, lane in self._lanes.items()}
        dispatched = self._dispatched
        while True:
            name = self._next_lane(lanes)
            if name is None:
                return
            dispatched += 1
            lanes[name].served_at = dispatched
            yield lanes[name].items.popleft()

    @staticmethod
    def _next_lane(lanes: dict[str, _Lane]) -> str | None:
        waiting = [(lane.served_at, lane.opened_at, name) for name, lane in lanes.items() if lane.items]
        return min(waiting)[2] if waiting else None
