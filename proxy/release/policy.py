"""The judge's policy from the `analysis:` config section, and the judge's state as the status shows it.

Invariants:
- `policy_of` maps one frozen `Analysis` to one frozen `JudgePolicy`, built once per config (cached
  on the settings object's identity), never per tick.
- A `State` is replaced whole, never changed: "judging", "passed", "failed", "inconclusive" or
  "not_watching", the slot it is about, since when, and the action that follows (`hold`,
  `rollback`, or `alert` for a slot that has nowhere left to roll back to).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from proxy.release.judge import JudgePolicy
from proxy.settings.rollout import Analysis

StateName = Literal["judging", "passed", "failed", "inconclusive", "not_watching"]


@dataclass(frozen=True, slots=True)
class State:
    name: str
    slot: str
    since: float
    reasons: tuple[str, ...] = ()
    action: str = ""  # what follows: hold, rollback or alert ("" = the configured on_inconclusive)
    note: str = ""
    generation: int = 0  # the snapshot that began the release (or, for "failed", the rollback)
    numbers: tuple[tuple[str, float], ...] = ()  # the numbers behind an ended release's outcome


@lru_cache(maxsize=8)
def policy_of(analysis: Analysis) -> JudgePolicy:
    return JudgePolicy(
        false_rollback_rate=analysis.false_rollback_rate,
        failure_ratio=analysis.error_ratio,
        failure_margin=analysis.error_margin,
        client_ratio=analysis.error_ratio,
        endpoint_ratio=analysis.error_ratio,
        endpoint_margin=analysis.error_margin,
        latency_rel_margin=analysis.latency_margin,
        latency_abs_margin=analysis.latency_margin_min,
        min_requests=analysis.min_requests,
        max_error_rate=analysis.max_error_rate,
        max_p99=analysis.max_p99,
        hang_floor=analysis.hang_floor,
        max_hang=analysis.max_hang,
    )
