"""The circuit breaker state machine: every transition, manual control, conditions, invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from execution_operator.breaker import (
    BreakerPolicy,
    BreakerState,
    CircuitState,
    ControlMode,
    admit,
    advance,
    available_condition,
    format_time,
    record_failure,
    record_result,
    record_success,
    state_gauge_value,
)
from execution_operator.breaker_control import (
    MODE_ANNOTATION,
    RESET_ANNOTATION,
    apply_control,
    force_closed,
    force_open,
    parse_mode,
    reset,
    set_auto,
)
from execution_operator.errors import ERROR_FLAGS, ErrorType

T0 = datetime(2026, 7, 1, 10, 0, 0, tzinfo=UTC)
POLICY = BreakerPolicy(failure_threshold=3, open_seconds=30, success_threshold=2)
TRIPPING = sorted(t for t, f in ERROR_FLAGS.items() if f.trips_breaker)
NOT_TRIPPING = sorted(t for t, f in ERROR_FLAGS.items() if not f.trips_breaker)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def fail(state: BreakerState, seconds: float = 0, kind: ErrorType = ErrorType.IMAGE_PULL_ERROR, **kw: str):
    return record_failure(state, POLICY, kind, "image cannot be pulled", at(seconds), **kw)


def opened(seconds: float = 0) -> BreakerState:
    state = BreakerState()
    for _ in range(POLICY.failure_threshold):
        state, _ = fail(state, seconds)
    assert state.state == CircuitState.OPEN
    return state


def half_open(seconds: float = 30) -> BreakerState:
    state, transition = advance(opened(), POLICY, at(seconds))
    assert state.state == CircuitState.HALF_OPEN
    assert transition is not None
    return state


# -- closed -------------------------------------------------------------------------------------


def test_fresh_state_is_closed_and_admits_without_change() -> None:
    state = BreakerState()
    admission = admit(state, POLICY, T0)
    assert admission.allowed
    assert not admission.probe
    assert admission.new_state == state
    assert admission.transition is None


def test_closed_opens_at_the_threshold_of_consecutive_failures() -> None:
    state = BreakerState()
    state, t1 = fail(state, 1)
    state, t2 = fail(state, 2)
    assert (t1, t2) == (None, None)
    assert state.state == CircuitState.CLOSED
    assert state.failure_count == 2
    state, t3 = fail(state, 3)
    assert t3 is not None
    assert (t3.from_state, t3.to_state, t3.reason, t3.to) == (
        CircuitState.CLOSED,
        CircuitState.OPEN,
        "FailureThresholdReached",
        "open",
    )
    assert state.state == CircuitState.OPEN
    assert state.failure_count == 3
    assert state.opened_at == at(3)
    assert state.retry_at == at(33)
    assert state.last_transition_time == at(3)
    assert state.last_failure is not None
    assert (state.last_failure.type, state.last_failure.time) == ("image_pull_error", at(3))


@pytest.mark.parametrize("kind", TRIPPING)
def test_every_tripping_type_counts(kind: ErrorType) -> None:
    state, _ = record_failure(BreakerState(), POLICY, kind, "x", T0)
    assert state.failure_count == 1


@pytest.mark.parametrize("kind", NOT_TRIPPING)
def test_failures_that_do_not_trip_change_nothing(kind: ErrorType) -> None:
    state = BreakerState(failure_count=2)
    for _ in range(10):
        new, transition = record_failure(state, POLICY, kind, "user code failed", T0)
        assert new == state
        assert transition is None


def test_a_success_resets_the_consecutive_count() -> None:
    state, _ = fail(fail(BreakerState())[0])
    state, transition = record_success(state, POLICY, at(5))
    assert transition is None
    assert state.failure_count == 0
    state, _ = fail(fail(state, 6)[0], 7)
    assert state.state == CircuitState.CLOSED


def test_record_result_treats_reaching_user_code_as_success() -> None:
    state, _ = fail(fail(BreakerState())[0])
    # The user's code ran and then failed: still a successful launch.
    state, _ = record_result(state, POLICY, T0, reached_user_code=True, error_type=ErrorType.OOM)
    assert state.failure_count == 0
    state, _ = record_result(
        state, POLICY, T0, reached_user_code=False, error_type=ErrorType.UNSCHEDULABLE, message="no nodes"
    )
    assert state.failure_count == 1
    state, transition = record_result(state, POLICY, T0, reached_user_code=False)
    assert state.failure_count == 1
    assert transition is None


def test_failure_message_is_one_bounded_line() -> None:
    state, _ = record_failure(BreakerState(), POLICY, ErrorType.INTERNAL_ERROR, "a\nb\t" + "x" * 1000, T0)
    assert state.last_failure is not None
    assert "\n" not in state.last_failure.message
    assert len(state.last_failure.message) <= 256


# -- open ---------------------------------------------------------------------------------------


def test_open_refuses_until_retry_at() -> None:
    state = opened()
    for seconds in (0, 10, 29.999):
        admission = admit(state, POLICY, at(seconds))
        assert not admission.allowed
        assert not admission.probe
        assert admission.retry_at == at(30)
        assert admission.new_state == state


def test_open_goes_half_open_at_retry_at_and_admits_a_probe() -> None:
    admission = admit(opened(), POLICY, at(30), holder="ns/a#1")
    assert admission.allowed
    assert admission.probe
    assert admission.transition is not None
    assert (admission.transition.to_state, admission.transition.reason) == (
        CircuitState.HALF_OPEN,
        "OpenPeriodElapsed",
    )
    assert admission.new_state.state == CircuitState.HALF_OPEN
    assert [p.holder for p in admission.new_state.probes] == ["ns/a#1"]
    assert admission.new_state.probes_in_flight == 1


def test_failures_while_open_are_counted_without_extending_the_wait() -> None:
    state = opened()
    state, transition = fail(state, 10)
    assert transition is None
    assert state.failure_count == 4
    assert state.retry_at == at(30)


def test_late_success_while_open_changes_nothing() -> None:
    state = opened()
    assert record_success(state, POLICY, at(5)) == (state, None)


def test_advance_moves_open_to_half_open_only_after_retry_at() -> None:
    state = opened()
    assert advance(state, POLICY, at(29)) == (state, None)
    new, transition = advance(state, POLICY, at(31))
    assert new.state == CircuitState.HALF_OPEN
    assert transition is not None
    assert new.last_transition_time == at(31)


# -- half-open ----------------------------------------------------------------------------------


def test_half_open_admits_at_most_max_probes_concurrently() -> None:
    state = half_open()
    granted = []
    for n in range(5):
        admission = admit(state, POLICY, at(31), holder=f"p{n}")
        state = admission.new_state
        granted.append(admission.allowed)
    assert granted == [True, True, False, False, False]
    assert state.probes_in_flight == POLICY.max_probes == 2
    refused = admit(state, POLICY, at(31), holder="late")
    # Refused probes are told to come back by the next open period at the latest.
    assert refused.retry_at == at(61)


def test_half_open_max_probes_can_differ_from_success_threshold() -> None:
    policy = BreakerPolicy(failure_threshold=1, success_threshold=3, half_open_max_probes=1)
    state, _ = record_failure(BreakerState(), policy, ErrorType.INTERNAL_ERROR, "x", T0)
    first = admit(state, policy, at(30))
    second = admit(first.new_state, policy, at(30))
    assert first.allowed
    assert not second.allowed


def test_the_same_holder_is_readmitted_without_a_second_slot() -> None:
    state = admit(half_open(), POLICY, at(31), holder="ns/a#1").new_state
    again = admit(state, POLICY, at(32), holder="ns/a#1")
    assert again.allowed
    assert again.probe
    assert again.new_state == state


def test_probe_successes_close_after_success_threshold() -> None:
    state = half_open()
    state = admit(state, POLICY, at(31), holder="a").new_state
    state = admit(state, POLICY, at(31), holder="b").new_state
    state, t1 = record_success(state, POLICY, at(35), holder="a")
    assert t1 is None
    assert state.success_count == 1
    assert state.probes_in_flight == 1
    state, t2 = record_success(state, POLICY, at(36), holder="b")
    assert t2 is not None
    assert (t2.from_state, t2.to_state, t2.reason) == (
        CircuitState.HALF_OPEN,
        CircuitState.CLOSED,
        "ProbesSucceeded",
    )
    assert state == state.model_copy(
        update={"failure_count": 0, "success_count": 0, "probes": (), "opened_at": None, "retry_at": None}
    )
    assert state.state == CircuitState.CLOSED
    assert state.failure_count == 0
    assert admit(state, POLICY, at(37)).allowed


def test_a_reported_probe_frees_its_slot_for_the_next() -> None:
    state = half_open()
    state = admit(state, POLICY, at(31), holder="a").new_state
    state = admit(state, POLICY, at(31), holder="b").new_state
    assert not admit(state, POLICY, at(31), holder="c").allowed
    state, _ = record_success(state, POLICY, at(32), holder="a")
    assert admit(state, POLICY, at(32), holder="c").allowed


def test_a_probe_failure_reopens_with_a_fresh_retry_at() -> None:
    state = half_open()
    state = admit(state, POLICY, at(31), holder="a").new_state
    state = admit(state, POLICY, at(31), holder="b").new_state
    state, _ = record_success(state, POLICY, at(32), holder="a")
    state, transition = fail(state, 40, holder="b")
    assert transition is not None
    assert (transition.from_state, transition.to_state, transition.reason) == (
        CircuitState.HALF_OPEN,
        CircuitState.OPEN,
        "ProbeFailed",
    )
    assert state.opened_at == at(40)
    assert state.retry_at == at(70)
    assert state.success_count == 0
    assert state.probes == ()
    assert not admit(state, POLICY, at(69)).allowed
    assert admit(state, POLICY, at(70)).allowed


def test_a_non_tripping_probe_failure_frees_the_slot_without_counting() -> None:
    state = admit(half_open(), POLICY, at(31), holder="a").new_state
    state, transition = record_failure(state, POLICY, ErrorType.QUOTA_EXCEEDED, "quota", at(32), holder="a")
    assert transition is None
    assert state.state == CircuitState.HALF_OPEN
    assert state.probes == ()


def test_stuck_probes_expire_so_the_breaker_cannot_wedge() -> None:
    state = half_open()
    state = admit(state, POLICY, at(31), holder="a").new_state
    state = admit(state, POLICY, at(40), holder="b").new_state
    blocked = admit(state, POLICY, at(100), holder="c")
    assert not blocked.allowed
    # The earliest slot frees at its start + probe timeout.
    assert blocked.retry_at == min(at(130), at(31 + POLICY.probe_timeout_seconds))
    before_expiry = admit(state, POLICY, at(31 + POLICY.probe_timeout_seconds - 1), holder="c")
    assert not before_expiry.allowed
    after = admit(state, POLICY, at(31 + POLICY.probe_timeout_seconds), holder="c")
    assert after.allowed
    assert after.probe
    assert [p.holder for p in after.new_state.probes] == ["b", "c"]
    # A late report from the expired probe is harmless.
    late, _ = record_success(after.new_state, POLICY, at(400), holder="a")
    assert [p.holder for p in late.probes] == ["b", "c"]
    assert late.success_count == 1


def test_anonymous_probes_release_oldest_first() -> None:
    state = half_open()
    state = admit(state, POLICY, at(31)).new_state
    state = admit(state, POLICY, at(32)).new_state
    state, _ = record_result(state, POLICY, at(33), reached_user_code=False)
    assert [p.started_at for p in state.probes] == [at(32)]


# -- manual control -----------------------------------------------------------------------------


def test_force_open_refuses_everything_and_never_times_out() -> None:
    state, transition = force_open(BreakerState(), T0)
    assert transition is not None
    assert transition.to_state == CircuitState.OPEN
    assert transition.reason == "ForcedOpen"
    assert state.forced == ControlMode.FORCE_OPEN
    assert state.retry_at is None
    for seconds in (0, 3600, 86400):
        admission = admit(state, POLICY, at(seconds))
        assert not admission.allowed
        assert admission.retry_at == at(seconds + POLICY.open_seconds)
    assert advance(state, POLICY, at(86400)) == (state, None)
    state, transition = record_success(state, POLICY, at(5))
    assert state.state == CircuitState.OPEN
    assert transition is None


def test_force_closed_admits_and_never_trips() -> None:
    state, transition = force_closed(opened(), at(5))
    assert transition is not None
    assert transition.to_state == CircuitState.CLOSED
    for n in range(10):
        state, transition = fail(state, 10 + n)
        assert transition is None
    assert state.state == CircuitState.CLOSED
    assert state.failure_count == 10
    assert admit(state, POLICY, at(30)).allowed


def test_back_to_auto_from_force_open_probes_before_closing() -> None:
    state, _ = force_open(BreakerState(), T0)
    state, transition = set_auto(state, at(100))
    assert transition is None
    assert state.forced == ControlMode.AUTO
    admission = admit(state, POLICY, at(100))
    assert admission.allowed
    assert admission.probe
    assert admission.new_state.state == CircuitState.HALF_OPEN


def test_back_to_auto_from_force_closed_starts_counting_afresh() -> None:
    state, _ = force_closed(BreakerState(), T0)
    for n in range(5):
        state, _ = fail(state, n)
    state, _ = set_auto(state, at(10))
    assert state.failure_count == 0
    state, transition = fail(state, 11)
    assert transition is None
    assert state.state == CircuitState.CLOSED


def test_reset_closes_and_clears_counts() -> None:
    state, transition = reset(admit(half_open(), POLICY, at(31)).new_state, at(40))
    assert transition is not None
    assert transition.reason == "Reset"
    assert state.state == CircuitState.CLOSED
    assert (state.failure_count, state.success_count, state.probes, state.retry_at) == (0, 0, (), None)
    assert state.last_failure is not None  # history stays


def test_reset_keeps_a_forced_open_breaker_open() -> None:
    state, _ = force_open(opened(), at(1))
    state, transition = reset(state, at(2))
    assert transition is None
    assert state.state == CircuitState.OPEN
    assert state.failure_count == 0


def test_apply_control_resets_once_per_distinct_value() -> None:
    state = opened()
    annotations = {RESET_ANNOTATION: "2026-07-01T10:05"}
    state, transitions = apply_control(state, annotations, at(5))
    assert [t.reason for t in transitions] == ["Reset"]
    assert state.state == CircuitState.CLOSED
    assert state.last_reset == "2026-07-01T10:05"
    for n in range(3):
        state, _ = fail(state, 6 + n)
    assert state.state == CircuitState.OPEN
    # The same value again does nothing; a new value resets again.
    same, transitions = apply_control(state, annotations, at(10))
    assert same == state
    assert transitions == []
    state, transitions = apply_control(state, {RESET_ANNOTATION: "second"}, at(11))
    assert state.state == CircuitState.CLOSED
    assert len(transitions) == 1


def test_apply_control_mode_annotation() -> None:
    state, transitions = apply_control(BreakerState(), {MODE_ANNOTATION: "force-open"}, T0)
    assert state.forced == ControlMode.FORCE_OPEN
    assert [t.to for t in transitions] == ["open"]
    # Idempotent while the annotation stays.
    assert apply_control(state, {MODE_ANNOTATION: "Force_Open"}, at(1)) == (state, [])
    # An unknown value leaves the mode alone rather than silently closing.
    assert apply_control(state, {MODE_ANNOTATION: "forceopen"}, at(1)) == (state, [])
    state, transitions = apply_control(state, {MODE_ANNOTATION: "force-closed"}, at(2))
    assert state.forced == ControlMode.FORCE_CLOSED
    assert [t.to for t in transitions] == ["closed"]
    # Removing the annotation means auto.
    state, transitions = apply_control(state, {}, at(3))
    assert state.forced == ControlMode.AUTO
    assert transitions == []


def test_parse_mode() -> None:
    assert parse_mode(None) == ControlMode.AUTO
    assert parse_mode("") == ControlMode.AUTO
    assert parse_mode(" FORCE-CLOSED ") == ControlMode.FORCE_CLOSED
    assert parse_mode("sometimes") is None


# -- condition, gauge, serialisation ------------------------------------------------------------


def test_available_condition_for_each_state() -> None:
    closed = available_condition(BreakerState(), T0, 4)
    assert (closed["type"], closed["status"], closed["reason"]) == ("Available", "True", "CircuitClosed")
    assert closed["observedGeneration"] == 4
    assert closed["lastTransitionTime"] == "2026-07-01T10:00:00Z"

    state = opened(1.5)
    open_condition = available_condition(state, at(10), 4)
    assert (open_condition["status"], open_condition["reason"]) == ("False", "CircuitOpen")
    assert "3 infrastructure failure(s)" in open_condition["message"]
    assert "probes allowed after 2026-07-01T10:00:31Z" in open_condition["message"]
    assert open_condition["lastTransitionTime"] == "2026-07-01T10:00:01Z"
    # Absolute times only: the same state later gives the same condition.
    assert available_condition(state, at(20), 4) == open_condition

    half = available_condition(admit(state, POLICY, at(40)).new_state, at(40), None)
    assert (half["status"], half["reason"]) == ("Unknown", "CircuitHalfOpen")
    assert "1 probe(s) in flight" in half["message"]
    assert "observedGeneration" not in half

    forced = available_condition(force_open(BreakerState(), T0)[0], T0, 1)
    assert forced["reason"] == "CircuitOpen"
    assert "forced open" in forced["message"]


def test_gauge_values() -> None:
    assert state_gauge_value(BreakerState()) == 0
    assert state_gauge_value(half_open()) == 1
    assert state_gauge_value(opened()) == 2
    assert state_gauge_value("open") == 2


def test_status_round_trip_uses_design_field_names() -> None:
    state = admit(half_open(), POLICY, at(31), holder="ns/a#1").new_state
    data = state.to_status()
    assert {"state", "failureCount", "successCount", "lastFailure", "openedAt", "retryAt"} <= set(data)
    assert data["state"] == "half_open"
    assert data["lastFailure"]["type"] == "image_pull_error"
    assert data["probesInFlight"] == 1
    assert data["probes"] == [{"holder": "ns/a#1", "startedAt": "2026-07-01T10:00:31Z"}]
    assert BreakerState.from_status(data) == state
    anonymous = admit(half_open(), POLICY, at(31)).new_state.to_status()
    assert anonymous["probes"] == [{"startedAt": "2026-07-01T10:00:31Z"}]
    assert BreakerState.from_status(None) == BreakerState()


def test_naive_and_offset_times_are_normalised_to_utc() -> None:
    naive = datetime(2026, 7, 1, 10, 0, 0)
    state, _ = record_failure(BreakerState(), POLICY, ErrorType.INTERNAL_ERROR, "x", naive)
    assert state.last_failure is not None
    assert state.last_failure.time == T0
    assert format_time(T0 + timedelta(microseconds=5)) == "2026-07-01T10:00:00Z"


def test_policy_from_spec_and_validation() -> None:
    policy = BreakerPolicy.from_spec({"failureThreshold": 2, "openSeconds": 5, "successThreshold": 1})
    assert (policy.failure_threshold, policy.open_seconds, policy.success_threshold, policy.max_probes) == (
        2,
        5.0,
        1,
        1,
    )
    assert BreakerPolicy.from_spec(None) == BreakerPolicy()
    assert BreakerPolicy.from_spec({}, pending_timeout_seconds=600).probe_timeout_seconds == 660
    with pytest.raises(ValueError, match="must be at least 1"):
        BreakerPolicy(failure_threshold=0)


# -- invariants over arbitrary event sequences ---------------------------------------------------

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["admit", "success", "failure", "control"]),
        st.integers(min_value=0, max_value=60),  # seconds since the previous event
        st.sampled_from(sorted(ErrorType)),
        st.sampled_from([None, "a", "b", "c"]),
        st.sampled_from([{}, {MODE_ANNOTATION: "force-open"}, {MODE_ANNOTATION: "force-closed"}]),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(events=EVENTS, threshold=st.integers(1, 4), successes=st.integers(1, 3))
def test_invariants_hold_for_any_sequence(events: list, threshold: int, successes: int) -> None:
    policy = BreakerPolicy(failure_threshold=threshold, open_seconds=30, success_threshold=successes)
    state = BreakerState()
    now = T0
    for kind, delta, error_type, holder, control in events:
        now += timedelta(seconds=delta)
        before = state
        transition = None
        if kind == "admit":
            admission = admit(state, policy, now, holder=holder)
            state, transition = admission.new_state, admission.transition
            assert admission.allowed or admission.retry_at is not None
            if admission.allowed and state.state == CircuitState.HALF_OPEN:
                assert admission.probe
        elif kind == "success":
            state, transition = record_success(state, policy, now, holder=holder)
        elif kind == "failure":
            state, transition = record_failure(state, policy, error_type, "x", now, holder=holder)
            if not ERROR_FLAGS[error_type].trips_breaker:
                assert state.failure_count == before.failure_count
        else:
            state, _ = apply_control(state, control, now)
            continue
        # Structural invariants.
        assert state.probes_in_flight <= policy.max_probes
        assert state.probes == () or state.state == CircuitState.HALF_OPEN
        if state.state == CircuitState.CLOSED and state.forced == ControlMode.AUTO:
            assert state.failure_count < policy.failure_threshold
        if state.state == CircuitState.OPEN and state.forced == ControlMode.AUTO:
            assert state.retry_at is not None
            assert state.opened_at is not None
        # Only legal automatic moves.
        if transition is not None:
            assert (transition.from_state, transition.to_state) in {
                (CircuitState.CLOSED, CircuitState.OPEN),
                (CircuitState.OPEN, CircuitState.HALF_OPEN),
                (CircuitState.HALF_OPEN, CircuitState.OPEN),
                (CircuitState.HALF_OPEN, CircuitState.CLOSED),
            }
            assert state.last_transition_time == now
        else:
            assert state.state == before.state
