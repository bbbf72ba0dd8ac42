"""Queue ordering (SPEC section 3): effective priority, then first-queued time."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Priority:
    initial: float = 0.0
    acceleration: float = 0.0     # points per minute of waiting
    maximum: float = 0.0

    def effective(self, queued_at: datetime, now: datetime) -> float:
        """min(initial + acceleration x minutes waited, maximum); a maximum below initial caps at initial."""
        minutes = max((now - queued_at).total_seconds(), 0.0) / 60.0
        value = self.initial + self.acceleration * minutes
        return min(value, max(self.maximum, self.initial))


def order_key(priority: Priority, queued_at: datetime, now: datetime, contact_id: int) -> tuple:
    """Sort key: higher effective priority first, then who entered the queue first.

    Live callers and queued callbacks use the same key, so a callback keeps
    exactly the place it had while the caller was holding.
    """
    return (-priority.effective(queued_at, now), queued_at, contact_id)
