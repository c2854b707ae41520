"""Wall time per named phase of a run (the ``phase_wall_time_s`` block of ``results.json``).

Example::

    >>> timer = PhaseTimer()
    >>> with timer("inversion"):
    ...     run_inversion()
    >>> timer.seconds                       # {"inversion": 12.3}; a phase entered twice accumulates
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Accumulated wall-clock seconds per phase name (this process's; not checkpointed, so a resumed run counts
    only the time it ran itself)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def rounded(self, digits: int = 3) -> dict[str, float]:
        """The seconds per phase, rounded (for JSON)."""
        return {phase: round(seconds, digits) for phase, seconds in self.seconds.items()}
