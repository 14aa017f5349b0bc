"""The retry policy for failed attempts: whether to retry, and how long to wait.

Pure functions; the caller supplies the random source so tests are deterministic. kopf's own retry
delay is fixed, so the operator computes the delay here and schedules the next attempt itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from .errors import ErrorType, flags

#: Disruptions (eviction, node lost, pod deleted) retried without consuming the user's budget.
DEFAULT_MAX_DISRUPTIONS = 3
#: Exponents beyond this cannot matter (any sane cap is reached far earlier) and would overflow.
_MAX_EXPONENT = 62


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**(attempt-1))).

    `attempt` is the 1-based number of the attempt that just failed, so the first retry waits up to
    `base`. Full jitter spreads a burst of simultaneous failures (a broken class failing 200
    Executions at once) over the whole window instead of synchronising their retries.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if base < 0 or cap < 0:
        raise ValueError("base and cap must not be negative")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    return rng.uniform(0.0, ceiling)


def delay_until(not_before: datetime, now: datetime, rng: random.Random, spread: float = 5.0) -> float:
    """Seconds to wait for a held launch: until `not_before` (e.g. an open breaker's `retryAt`), plus jitter.

    The jitter, uniform(0, spread), keeps the held Executions from all coming back in the same instant.
    """
    if spread < 0:
        raise ValueError("spread must not be negative")
    return max(0.0, (not_before - now).total_seconds()) + rng.uniform(0.0, spread)


@dataclass(frozen=True)
class RetryDecision:
    """Whether to retry a failed attempt, and whether the retry counts against the user's budget."""

    retry: bool
    #: Whether the next attempt counts against `retry.maxAttempts` (false for a disruption within its cap).
    consumes_budget: bool
    #: A short machine-friendly explanation, for logs and Events.
    reason: str


def budget_used(attempt: int, disruptions: int, max_disruptions: int = DEFAULT_MAX_DISRUPTIONS) -> int:
    """Attempts so far (including `attempt`) that count against `maxAttempts`.

    Earlier disruptions within the cap were free; those beyond it were charged like any retry.
    """
    return attempt - min(disruptions, max_disruptions)


def decide_retry(
    error_type: ErrorType | str,
    attempt: int,
    max_attempts: int,
    disruptions: int,
    max_disruptions: int = DEFAULT_MAX_DISRUPTIONS,
) -> RetryDecision:
    """Decide whether the attempt that just failed with `error_type` gets another attempt.

    `attempt` is the 1-based number of the failed attempt (counting every attempt, free or not);
    `disruptions` is how many earlier attempts ended in a disruption. Rules:

    * types that are not retryable (the user's code failing, timeout, OOM, cancel, invalid spec or
      image) are never retried;
    * disruptions (`flags(t).disruption`) are retried without consuming the budget while fewer than
      `max_disruptions` earlier ones were; past that cap they are charged like any retry;
    * every other retryable type, `service_unavailable` included, is retried while fewer than
      `max_attempts` budgeted attempts have been used.
    """
    if attempt < 1 or max_attempts < 1 or disruptions < 0 or max_disruptions < 0:
        raise ValueError("attempt and max_attempts are 1-based; disruption counts are not negative")
    kind = ErrorType(error_type)
    type_flags = flags(kind)
    if not type_flags.retryable:
        return RetryDecision(False, False, f"{kind.value} is not retryable")
    if type_flags.disruption and disruptions < max_disruptions:
        return RetryDecision(
            True, False, f"disruption {disruptions + 1} of {max_disruptions} does not use the retry budget"
        )
    used = budget_used(attempt, disruptions, max_disruptions)
    if used < max_attempts:
        return RetryDecision(True, True, f"{kind.value} is retryable; attempt {used} of {max_attempts} used")
    if type_flags.disruption:
        return RetryDecision(False, False, f"disruption cap {max_disruptions} and retry budget exhausted")
    return RetryDecision(False, False, f"retry budget exhausted after {used} of {max_attempts} attempts")
