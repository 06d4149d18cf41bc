"""``/metrics`` of ``zq http``: values after a known workload, and a real Prometheus
server scraping it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from typing import Iterator

import pytest

import zq
from tests.lifecycle_tasks import wait_for

from .conftest import free_port
from .web_harness import WebNode, token_file, web_cluster

prom_parser = pytest.importorskip("prometheus_client.parser")


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    yield from web_cluster(concurrency=3)


@pytest.fixture(scope="module")
def web(cluster) -> Iterator[WebNode]:
    w = WebNode(cluster).start()
    yield w
    assert w.stop() == 0, w.node.log()


def scrape(web: WebNode) -> dict[tuple, float]:
    code, text, headers = web.call("GET", "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    out = {}
    for fam in prom_parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def test_metrics_after_a_known_workload(cluster, web, make_client):
    client = make_client(cluster)
    ok = [client.submit_by_name("http.add", {"a": i, "b": 1}, retain_result=True) for i in range(5)]
    bad = [client.submit_by_name("http.fail", None, retain_result=True) for _ in range(2)]
    assert [f.result(15) for f in ok] == [1, 2, 3, 4, 5]
    for f in bad:
        with pytest.raises(zq.TaskFailed):
            f.result(15)
    client.pause("held")
    held = [client.submit_by_name("http.add", [i], queue="held") for i in range(3)]
    wait_for(lambda: client.count_tasks(queue="held", state="PAUSED") == 3)
    m = wait_for(lambda: (lambda m: m if m[("zq_ventilator_events_total", ("event", "done"))] == 7 else None)(
        scrape(web)), what="the ventilator to count 7 tasks done")
    assert m[("zq_up",)] == 1
    assert m[("zq_ventilator_events_total", ("event", "submitted"))] == 10
    assert m[("zq_sink_events_total", ("event", "results"))] == 7
    assert m[("zq_sink_results_retained",)] == 7
    assert m[("zq_workers_online",)] == 1
    assert m[("zq_slots_total",)] == 3 and m[("zq_slots_busy",)] == 0
    assert m[("zq_queue_depth", ("queue", "held"))] == 3
    assert m[("zq_queue_paused", ("queue", "held"))] == 1 and m[("zq_queue_served", ("queue", "held"))] == 0
    assert m[("zq_tasks", ("queue", "held"), ("state", "PAUSED"))] == 3
    assert m[("zq_queue_depth", ("queue", "default"))] == 0
    assert m[("zq_queue_paused", ("queue", "default"))] == 0
    worker = [k for k in m if k[0] == "zq_worker_tasks_done_total"]
    assert len(worker) == 1 and m[worker[0]] == 7
    assert dict(worker[0][1:])["host"] and m[("zq_worker_slots", *worker[0][1:])] == 3
    assert m[("zq_bad_messages_total", ("node", "ventilator"))] == 0
    assert 0 <= m[("zq_ventilator_loop_lag_seconds",)] < 5
    assert m[("zq_sink_link_up",)] == 1
    assert m[("zq_node_secured", ("node", "sink"))] == 0
    for f in held:
        client.cancel(f.task_id)
    client.resume("held")


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="Debian's prometheus is not installed (apt-get install prometheus; .ci/run does)")
def test_a_real_prometheus_scrapes_it_with_the_token(cluster, tmp_path):
    """Prometheus reads the token from a file, as README says; zq http refuses it otherwise."""
    path, _ = token_file(tmp_path)
    web = WebNode(cluster, "--token-file", path).start()
    port = free_port()
    target = urllib.parse.urlsplit(web.url).netloc
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: zq\n    authorization: {{credentials_file: '{path}'}}\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n")
    log = open(tmp_path / "prometheus.log", "w")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=log, cwd=str(tmp_path))
    try:
        def query() -> object:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": "zq_workers_online"})
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    res = json.loads(r.read())["data"]["result"]
            except OSError:
                return None
            return res[0] if res else None

        try:
            sample = wait_for(query, timeout=30, interval=0.2, what="prometheus to scrape zq_workers_online")
        except AssertionError:
            raise AssertionError((tmp_path / "prometheus.log").read_text()[-3000:]) from None
        assert sample["metric"]["job"] == "zq" and sample["value"][1] == "1"
    finally:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(5)
        log.close()
        assert web.stop() == 0
    assert os.path.isdir(tmp_path / "data")
