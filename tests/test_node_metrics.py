"""``--metrics-port`` on the ventilator, the sink and a worker: prometheus_client's own server,
fed by a snapshot each node's loop publishes; checked after a known workload."""

from __future__ import annotations

import os
import sys
import urllib.request

import pytest

from tests.conftest import run_zq
from tests.lifecycle_tasks import IMPORT_ARGS, wait_for, wait_registered

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def scrape(url: str) -> dict[tuple, float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def value(m: dict, metric: str, **labels: str) -> float:
    return m.get((metric, *sorted(labels.items())), 0.0)


def test_ventilator_and_sink_metrics_after_a_known_workload(start, make_client):
    cluster = start(workers=1, executor="thread", concurrency=2, worker_args=IMPORT_ARGS,
                    ventilator_args=["--metrics-port", "0"], sink_args=["--metrics-port", "0"])
    vurl, surl = cluster.ventilator.endpoints["metrics"], cluster.sink.endpoints["metrics"]
    assert vurl.startswith("http://127.0.0.1:") and vurl.endswith("/metrics") and surl != vurl
    c = make_client(cluster)
    wait_registered(c, "lc.add")
    ok = [c.submit_by_name("lc.add", [i, 1], retain_result=True) for i in range(3)]
    bad = [c.submit_by_name("lc.fail", ["x"]) for _ in range(2)]
    assert [f.result(15) for f in ok] == [1, 2, 3]
    for f in bad:
        with pytest.raises(Exception):
            f.result(15)
    c.pause("held")
    c.submit_by_name("lc.add", [0, 0], queue="held")
    c.submit_by_name("lc.add", [0, 0], queue="held")

    def settled() -> dict:
        m = scrape(vurl)
        return m if (value(m, "zq_tasks_total", state="FAILED", queue="default", name="lc.fail") == 2
                     and value(m, "zq_queue_depth", queue="held") == 2) else None

    m = wait_for(settled, 15, what="the ventilator's metrics")
    assert value(m, "zq_tasks_total", state="SUCCESS", queue="default", name="lc.add") == 3
    assert value(m, "zq_task_run_seconds_count") == 5 and value(m, "zq_task_queue_seconds_count") == 5
    assert value(m, "zq_task_run_seconds_bucket", le="+Inf") == 5
    assert value(m, "zq_workers_online") == 1 and value(m, "zq_slots_busy") == 0
    assert ("zq_worker_tasks_held", ("worker", c.stats()["ventilator"]["workers"][0]["id"])) in m
    assert value(m, "zq_workers_lost_total", cause="heartbeat") == 0
    assert value(m, "zq_retries_total") == 0 and value(m, "zq_bad_messages_total") == 0
    assert 0 <= value(m, "zq_ventilator_loop_lag_seconds") < 5
    s = wait_for(lambda: (x := scrape(surl)) and value(x, "zq_sink_results_retained") == 3 and x, 15,
                 what="the sink's metrics")
    assert value(s, "zq_sink_retained_bytes") > 0 and value(s, "zq_sink_results_total") >= 5


def test_a_workers_metrics_after_a_known_workload(start, make_client):
    cluster = start(workers=1, executor="thread", concurrency=3,
                    worker_args=[*IMPORT_ARGS, "--metrics-port", "0"])
    wurl = cluster.workers[0].endpoints["metrics"]
    assert wurl.startswith("http://127.0.0.1:") and wurl.endswith("/metrics")
    c = make_client(cluster)
    wait_registered(c, "lc.add")
    assert [c.submit_by_name("lc.add", [i, 1]).result(15) for i in range(4)] == [1, 2, 3, 4]
    with pytest.raises(Exception):
        c.submit_by_name("lc.fail", ["x"]).result(15)

    def settled() -> dict:
        m = scrape(wurl)
        return m if value(m, "zq_worker_tasks_total", state="FAILED") == 1 else None

    m = wait_for(settled, 15, what="the worker's metrics")
    assert value(m, "zq_worker_tasks_total", state="SUCCESS") == 4
    assert value(m, "zq_worker_slots") == 3 and value(m, "zq_worker_slots_busy") == 0
    assert value(m, "zq_worker_task_run_seconds_count") == 5
    assert value(m, "zq_worker_task_run_seconds_bucket", le="+Inf") == 5
    assert 0 <= value(m, "zq_worker_ventilator_silent_seconds") < 5
    assert value(m, "zq_bad_messages_total") == 0


def test_metrics_port_without_prometheus_client_is_a_one_line_error(tmp_path):
    fake = tmp_path / "prometheus_client"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    r = run_zq("ventilator", "--clients", "tcp://127.0.0.1:0", "--workers", "tcp://127.0.0.1:0",
               "--metrics-port", "0", env=env)
    assert r.returncode == 3, r.stderr
    assert 'pip install "zq[web]"' in r.stderr and "Traceback" not in r.stderr
