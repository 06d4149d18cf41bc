"""``/metrics``: the cluster's state for Prometheus, from one ``stats()`` call per scrape.

A custom ``prometheus_client`` Collector turns that answer into metric families (no
hand-written exposition format); only what ``stats()`` really has is exported:

    zq_up                                     1 if the ventilator and the sink answered
    zq_tasks{state,queue}                     queued/running tasks per queue (gauge)
    zq_queue_depth{queue}                     tasks waiting in each queue
    zq_queue_paused{queue}, zq_queue_served{queue}
    zq_task_name_disabled{name}               1 for each disabled task name
    zq_workers_online
    zq_slots_total, zq_slots_busy             executor slots, and those running a task
    zq_worker_slots{worker,host}, zq_worker_tasks_held{worker,host}
    zq_worker_tasks_done_total{worker,host}
    zq_ventilator_events_total{event}         every ventilator counter (submitted, done, ...)
    zq_sink_events_total{event}               every sink counter (results, delivered, ...)
    zq_bad_messages_total{node}
    zq_tasks_per_second, zq_sink_results_per_second
    zq_sink_results_retained, zq_sink_results_undelivered, zq_sink_results_awaiting_ack
    zq_ventilator_loop_lag_seconds, zq_ventilator_loop_lag_max_seconds
    zq_ventilator_uptime_seconds
    zq_sink_link_up, zq_sink_link_silent_seconds, zq_sink_link_waiting
    zq_node_secured{node}
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("zq.http")


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=_num(value))


class ClusterCollector(Collector):
    """Calls ``stats`` (a blocking ``zq.Client.stats``) once per collect."""

    def __init__(self, stats: Callable[[], dict]) -> None:
        self.stats = stats

    def describe(self) -> list:
        return []  # collected at scrape time only (a registration must not call the cluster)

    def collect(self) -> Iterator[Metric]:
        try:
            st = self.stats()
        except Exception as exc:  # noqa: BLE001 (a scrape reports the cluster down, never fails)
            log.warning("metrics: stats() failed: %s", exc)
            yield _gauge("zq_up", "1 if the ventilator and the sink answered this scrape", 0)
            return
        yield _gauge("zq_up", "1 if the ventilator and the sink answered this scrape", 1)
        v, s = st.get("ventilator") or {}, st.get("sink") or {}
        yield from self._queues(v)
        yield from self._workers(v)
        yield from self._ventilator(v)
        yield from self._sink(s)
        bad = CounterMetricFamily("zq_bad_messages", "Malformed messages dropped, by node", labels=["node"])
        for node, d in (("ventilator", v), ("sink", s)):
            bad.add_metric([node], _num((d.get("counters") or {}).get("bad_messages", 0)))
        yield bad
        sec = GaugeMetricFamily("zq_node_secured", "1 if the node uses CURVE keys", labels=["node"])
        for node, d in (("ventilator", v), ("sink", s)):
            sec.add_metric([node], 1.0 if d.get("secured") else 0.0)
        yield sec

    @staticmethod
    def _queues(v: dict) -> Iterator[Metric]:
        tasks = GaugeMetricFamily("zq_tasks", "Active tasks by state and queue", labels=["state", "queue"])
        depth = GaugeMetricFamily("zq_queue_depth", "Tasks waiting in the queue", labels=["queue"])
        paused = GaugeMetricFamily("zq_queue_paused", "1 if the queue is paused", labels=["queue"])
        served = GaugeMetricFamily("zq_queue_served", "1 if a worker serves the queue", labels=["queue"])
        for q, d in sorted((v.get("queues") or {}).items()):
            waiting = _num(d.get("queued"))
            tasks.add_metric(["PAUSED" if d.get("paused") else "QUEUED", q], waiting)
            tasks.add_metric(["RUNNING", q], _num(d.get("running")))
            depth.add_metric([q], waiting)
            paused.add_metric([q], 1.0 if d.get("paused") else 0.0)
            served.add_metric([q], 1.0 if d.get("served") else 0.0)
        yield from (tasks, depth, paused, served)
        disabled = GaugeMetricFamily("zq_task_name_disabled", "1 for a disabled task name", labels=["name"])
        for name in v.get("disabled") or []:
            disabled.add_metric([str(name)], 1.0)
        yield disabled

    @staticmethod
    def _workers(v: dict) -> Iterator[Metric]:
        workers = v.get("workers") or []
        yield _gauge("zq_workers_online", "Workers the ventilator hears from", len(workers))
        total = sum(_num(w.get("concurrency")) for w in workers)
        busy = sum(_num(w.get("running")) for w in workers)  # slots running a task, as each worker says
        yield _gauge("zq_slots_total", "Executor slots of the online workers", total)
        yield _gauge("zq_slots_busy", "Executor slots running a task", busy)
        labels = ["worker", "host"]
        slots = GaugeMetricFamily("zq_worker_slots", "Executor slots of the worker", labels=labels)
        held = GaugeMetricFamily("zq_worker_tasks_held", "Tasks the worker holds (running and prefetched)",
                                 labels=labels)
        done = CounterMetricFamily("zq_worker_tasks_done", "Tasks the worker finished", labels=labels)
        for w in workers:
            key = [str(w.get("id")), str(w.get("host"))]
            slots.add_metric(key, _num(w.get("concurrency")))
            held.add_metric(key, _num(w.get("running")) + _num(w.get("prefetched")))
            done.add_metric(key, _num(w.get("done")))
        yield from (slots, held, done)

    @staticmethod
    def _ventilator(v: dict) -> Iterator[Metric]:
        events = CounterMetricFamily("zq_ventilator_events", "The ventilator's counters", labels=["event"])
        for k, n in sorted((v.get("counters") or {}).items()):
            if k != "bad_messages":
                events.add_metric([k], _num(n))
        yield events
        yield _gauge("zq_tasks_per_second", "Tasks finished per second (ventilator, last seconds)",
                     v.get("tasks_per_second"))
        loop = v.get("loop") or {}
        yield _gauge("zq_ventilator_loop_lag_seconds", "Longest loop turn over the last 1-2 s", loop.get("lag"))
        yield _gauge("zq_ventilator_loop_lag_max_seconds", "Longest loop turn since start", loop.get("lag_max"))
        yield _gauge("zq_ventilator_uptime_seconds", "Seconds since the ventilator started", v.get("uptime"))
        link = v.get("sink_link") or {}
        yield _gauge("zq_sink_link_up", "1 if the ventilator hears from its sink", 1 if link.get("up") else 0)
        yield _gauge("zq_sink_link_silent_seconds", "Seconds since the ventilator heard its sink",
                     link.get("silent"))
        yield _gauge("zq_sink_link_waiting", "Results the ventilator waits to hand to its sink",
                     link.get("waiting"))

    @staticmethod
    def _sink(s: dict) -> Iterator[Metric]:
        events = CounterMetricFamily("zq_sink_events", "The sink's counters", labels=["event"])
        for k, n in sorted((s.get("counters") or {}).items()):
            if k != "bad_messages":
                events.add_metric([k], _num(n))
        yield events
        yield _gauge("zq_sink_results_per_second", "Results recorded per second (sink)",
                     s.get("results_per_second"))
        yield _gauge("zq_sink_results_retained", "Results the sink retains", s.get("retained"))
        yield _gauge("zq_sink_results_undelivered", "Results waiting for their client", s.get("undelivered"))
        yield _gauge("zq_sink_results_awaiting_ack", "Results delivered, not yet acknowledged",
                     s.get("awaiting_ack"))


def registry_for(stats: Callable[[], dict]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ClusterCollector(stats))
    return reg
