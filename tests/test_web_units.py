"""Pure parts of zq http, without a cluster: the guard's rules, filters, schedules' next
run, the sampler's percentiles, the metrics collector on a given stats answer."""

from __future__ import annotations

import datetime as dt

import pytest

pytest.importorskip("fastapi", reason="zq http needs the web extra: pip install -e '.[test]'")

from zq.nodes.web import auth, views  # noqa: E402
from zq.nodes.web.metrics import registry_for  # noqa: E402
from zq.nodes.web.sampler import percentile  # noqa: E402
from zq.errors import InsecureBindError  # noqa: E402


def test_bind_rule():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert auth.is_loopback(host)
        auth.check_bind(host, None, False)
    for host in ("0.0.0.0", "10.1.2.3", "::", "example.com"):
        assert not auth.is_loopback(host)
        with pytest.raises(InsecureBindError, match="--token-file"):
            auth.check_bind(host, None, False)
        auth.check_bind(host, "t" * 20, False)
        auth.check_bind(host, None, True)


def test_session_cookie_is_signed_and_expires():
    g = auth.Guard(token="s3cret-token-s3cret-token")
    now = 1_800_000_000.0
    cookie = g.new_session(now)
    assert g.session_ok(cookie, now + 60)
    assert not g.session_ok(cookie, now + auth.SESSION_SECONDS + 1)
    expires, nonce, sig = cookie.split(".")
    assert not g.session_ok(f"{int(expires) + 999}.{nonce}.{sig}", now)  # a longer life: bad signature
    other = auth.Guard(token="s3cret-token-s3cret-token")  # another process: another key
    assert not other.session_ok(cookie, now)
    assert not auth.Guard().session_ok(cookie, now)  # open mode has no sessions
    assert g.bearer_ok("Bearer s3cret-token-s3cret-token") and g.bearer_ok("bearer s3cret-token-s3cret-token")
    assert not g.bearer_ok("Bearer s3cret") and not g.bearer_ok("Basic s3cret-token-s3cret-token")


def test_csrf_and_host_rules():
    ok = auth.Guard.csrf_ok
    assert ok("GET", False, True, True, None, None)               # safe methods pass
    assert ok("POST", True, True, True, None, None)               # a Bearer token is not ambient
    assert ok("POST", False, False, False, None, None)            # curl on an open loopback API
    assert not ok("POST", False, True, False, "a", None)          # a browser without the token
    assert not ok("DELETE", False, False, True, "a", "b")         # a session with a wrong token
    assert ok("DELETE", False, False, True, "a", "a")
    g = auth.Guard()
    assert g.host_ok("127.0.0.1:8080") and g.host_ok("localhost") and g.host_ok("[::1]:80")
    assert not g.host_ok("evil.example:8080") and not g.host_ok("10.0.0.1")
    assert auth.Guard(token="x" * 20).host_ok("evil.example")    # token mode: the token guards
    assert auth.Guard(loopback=False).host_ok("zq.example")


def test_token_file(tmp_path):
    p = tmp_path / "t"
    p.write_text("  abcdefghijklmnopqrstuvwxyz  \nignored\n")
    p.chmod(0o600)
    assert auth.read_token(str(p)) == "abcdefghijklmnopqrstuvwxyz"
    p.write_text("\n")
    with pytest.raises(Exception, match="at least 16"):
        auth.read_token(str(p))


def test_filters_and_times():
    assert views.filters("failed", "", "mod.fn", None) == {"state": "FAILED", "name": "mod.fn"}
    assert views.parse_time("1700000000.5") == 1700000000.5
    assert views.parse_time("2026-12-03T09:30:00+00:00") == dt.datetime(2026, 12, 3, 9, 30,
                                                                        tzinfo=dt.timezone.utc).timestamp()
    assert views.parse_time("2026-12-03") == dt.datetime(2026, 12, 3).timestamp()  # local midnight
    with pytest.raises(ValueError, match="unknown state 'DONE'"):
        views.parse_state("DONE")
    with pytest.raises(ValueError, match="ISO date"):
        views.parse_time("last tuesday")


def test_next_run():
    now = dt.datetime(2026, 12, 3, 9, 10, tzinfo=dt.timezone.utc).timestamp()
    assert views.next_run({"every": 3600.0}, now) == dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.timezone.utc).timestamp()
    paris = views.next_run({"cron": "0 7 * * *", "tz": "Europe/Paris"}, now)
    assert paris == dt.datetime(2026, 12, 4, 6, 0, tzinfo=dt.timezone.utc).timestamp()
    assert views.next_run({"every": 60.0, "max_runs": 2, "runs": 2}, now) is None
    assert views.next_run({"cron": "not a cron"}, now) is None


def test_percentile():
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(map(float, range(100))), 0.99) == 98.0


def test_metrics_from_a_stats_answer():
    from prometheus_client import generate_latest

    stats = {"ventilator": {"workers": [{"id": "w1", "host": "h", "concurrency": 4, "running": 3, "prefetched": 3,
                                          "done": 9}],
                            "queues": {"q": {"queued": 5, "running": 2, "paused": True, "served": True}},
                            "counters": {"submitted": 11, "bad_messages": 2}, "disabled": ["x.y"],
                            "loop": {"lag": 0.002}, "sink_link": {"up": True, "silent": 0.1, "waiting": 0}},
             "sink": {"retained": 3, "counters": {"results": 9}}}
    text = generate_latest(registry_for(lambda: stats)).decode()
    for line in ('zq_tasks{queue="q",state="PAUSED"} 5.0', 'zq_queue_depth{queue="q"} 5.0', "zq_slots_busy 3.0",
                 "zq_slots_total 4.0", 'zq_worker_tasks_held{host="h",worker="w1"} 6.0',
                 'zq_ventilator_events_total{event="submitted"} 11.0', 'zq_bad_messages_total{node="ventilator"} 2.0',
                 'zq_task_name_disabled{name="x.y"} 1.0', "zq_sink_results_retained 3.0",
                 "zq_ventilator_loop_lag_seconds 0.002", "zq_up 1.0"):
        assert line in text, line

    def down() -> dict:
        raise TimeoutError("no answer")

    assert generate_latest(registry_for(down)).decode().strip().endswith("zq_up 0.0")
