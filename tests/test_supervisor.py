"""The restart policy's decisions, step by step in simulated time (the daemon tests run it for real)."""

from __future__ import annotations

import pytest

from shmpiped.service.supervisor import RestartPolicy, Supervisor


def status(health, age=0.1, state="running"):
    return {"state": state, "workers": {"w": {"health": health, "last_metric_age_s": age, "pid": 1}}}


def test_failed_worker_restarts_after_a_doubling_back_off():
    sup = Supervisor(RestartPolicy(backoff_initial_s=0.1, backoff_max_s=0.3, budget=10))
    timeouts = {"w": 1.0}
    restarted_at = []
    now = 0.0
    for _ in range(4):
        while not sup.review(status("failed"), now, timeouts).restart:
            now += 0.01
        restarted_at.append(now)
        now += 0.01
    gaps = [round(b - a, 2) for a, b in zip(restarted_at, restarted_at[1:])]
    assert restarted_at[0] == pytest.approx(0.1, abs=0.011)
    assert gaps == pytest.approx([0.21, 0.31, 0.31], abs=0.011)  # 0.2, then capped at 0.3 (+ one step)
    assert sup.restarts_total == 4


def test_budget_spent_within_the_window_fails_the_pipeline():
    sup = Supervisor(RestartPolicy(backoff_initial_s=0.1, backoff_max_s=0.1, budget=2, window_s=60))
    now = 0.0
    restarts = 0
    verdict = None
    while now < 10:
        verdict = sup.review(status("failed"), now, {})
        restarts += len(verdict.restart)
        if verdict.exhausted:
            break
        now += 0.05
    assert restarts == 2
    assert "failed 3 times within 60 s (budget 2)" in verdict.exhausted
    assert sup.review(status("failed"), now + 100, {}).exhausted  # stays failed


def test_restarts_outside_the_window_do_not_count():
    sup = Supervisor(RestartPolicy(backoff_initial_s=0.1, backoff_max_s=0.1, budget=1, window_s=1.0,
                                   healthy_reset_s=0.5))
    assert sup.review(status("failed"), 0.0, {}).restart == ()
    assert sup.review(status("failed"), 0.2, {}).restart == ("w",)
    sup.review(status("active"), 0.5, {})
    assert sup.review(status("failed"), 5.0, {}).restart == ()  # back-off starts again
    assert sup.review(status("failed"), 5.2, {}).restart == ("w",)  # the first restart aged out
    assert sup.exhausted is None


def test_healthy_worker_gets_its_back_off_reset():
    policy = RestartPolicy(backoff_initial_s=0.1, backoff_max_s=10, budget=100, healthy_reset_s=1.0)
    sup = Supervisor(policy)
    now = 0.0
    for _ in range(3):  # three quick failures: back-off grows to 0.4 s
        sup.review(status("failed"), now, {})
        now += 1.0
        assert sup.review(status("failed"), now, {}).restart
        now += 0.01
    sup.review(status("active"), now, {})
    sup.review(status("active"), now + 2.0, {})  # healthy long enough
    now += 3.0
    sup.review(status("failed"), now, {})
    assert sup.review(status("failed"), now + 0.11, {}).restart == ("w",)  # back to the initial 0.1 s


def test_watchdog_kills_a_worker_without_loop_progress():
    sup = Supervisor(RestartPolicy())
    assert sup.review(status("active", age=4.0), 0, {"w": 1.0}).kill == ()
    verdict = sup.review(status("active", age=5.5), 0, {"w": 1.0})
    assert verdict.kill and verdict.kill[0][0] == "w" and "watchdog 5 s" in verdict.kill[0][1]
    assert sup.review(status("waiting-input", age=9.0), 0, {"w": 2.5}).kill == ()  # 4 x 2.5 s = 10 s
    assert sup.review(status("active", age=9.0), 0, {"w": 1.0}, ).kill
    assert Supervisor(RestartPolicy(watchdog_s=0.5)).review(status("idle", age=0.6), 0, {}).kill


def test_paused_pipeline_is_not_watched():
    sup = Supervisor(RestartPolicy())
    assert sup.review(status("active", age=60, state="paused"), 0, {"w": 1.0}).kill == ()


def test_worker_stuck_starting_is_killed():
    sup = Supervisor(RestartPolicy(start_timeout_s=2.0))
    assert sup.review(status("starting", age=None), 0.0, {}).kill == ()
    assert sup.review(status("starting", age=None), 1.9, {}).kill == ()
    assert sup.review(status("starting", age=None), 2.1, {}).kill[0][0] == "w"


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        RestartPolicy(backoff_initial_s=0)
    with pytest.raises(ValueError):
        RestartPolicy(backoff_initial_s=2, backoff_max_s=1)
    with pytest.raises(ValueError):
        RestartPolicy(watchdog_s=-1)
