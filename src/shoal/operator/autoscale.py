"""The autoscaling decision, kept pure so it can be tested without clocks.

The scheduler's ``GET /api/v1/adaptive_target`` says how many workers it wants
*now*; following it blindly would flap (a burst of tasks, then a gap, then
another burst). The operator therefore follows the rule of Kubernetes' own
HPA: the desired count is the *highest* target seen within the last
``scale_down_window`` seconds. Scaling up is immediate (a new high wins at
once); scaling down happens only after the target has stayed lower for the
whole window.

The cluster-wide target is split across worker groups by
:func:`split_target`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from shoal.operator.spec import WorkerGroup

DEFAULT_SCALE_DOWN_WINDOW = 60.0


@dataclass
class Stabiliser:
    """Remembers recent recommendations of one worker group."""

    window: float = DEFAULT_SCALE_DOWN_WINDOW
    _history: deque[tuple[float, int]] = field(default_factory=deque)

    def recommend(self, now: float, target: int) -> int:
        """Record ``target`` at time ``now``; answer the stabilised desired count."""
        self._history.append((now, target))
        while self._history and self._history[0][0] < now - self.window:
            self._history.popleft()
        return max(value for _, value in self._history)

    def reset(self) -> None:
        self._history.clear()


def split_target(target: int, groups: list[WorkerGroup], fixed: dict[str, int]) -> dict[str, int]:
    """Share the scheduler's cluster-wide target among the autoscaled groups.

    Workers of fixed-size groups count towards the target first; the rest
    fills the autoscaled groups in spec order, each bounded by its
    minReplicas and maxReplicas.
    """
    remaining = target - sum(fixed.values())
    result: dict[str, int] = {}
    for group in groups:
        if not group.autoscaled:
            continue
        want = group.clamp(remaining)
        result[group.name] = want
        remaining = max(0, remaining - want)
    return result


@dataclass
class Autoscaler:
    """Stabilisers of every autoscaled group of every cluster, keyed by (uid, group)."""

    window: float = DEFAULT_SCALE_DOWN_WINDOW
    _groups: dict[tuple[str, str], Stabiliser] = field(default_factory=dict)

    def desired(self, key: str, now: float, targets: dict[str, int],
                current: dict[str, int] | None = None) -> dict[str, int]:
        """The stabilised count of each group, from the scheduler's ``targets``.

        A group seen for the first time (just switched to autoscaling, or an
        operator that restarted) starts its history with its ``current``
        count, as the HPA does: it is not scaled down before a whole window
        has passed, whatever happened before the operator was looking.
        """
        result = {}
        for group, target in targets.items():
            stabiliser = self._groups.get((key, group))
            if stabiliser is None or stabiliser.window != self.window:
                stabiliser = self._groups[(key, group)] = Stabiliser(self.window)
                if current and group in current:
                    stabiliser.recommend(now, current[group])
            result[group] = stabiliser.recommend(now, target)
        return result

    def forget(self, key: str) -> None:
        for entry in [k for k in self._groups if k[0] == key]:
            del self._groups[entry]
