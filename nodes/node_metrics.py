"""``--metrics-port``: a node's own Prometheus metrics (the ventilator's, the sink's, a worker's).

    node loop ── once per tick ──▶ MetricsServer.publish(snapshot)   (a new dict each time)
    prometheus_client's HTTP thread ── scrape ──▶ SnapshotCollector  (reads the latest dict)

The metrics thread never touches the node's structures: the loop builds a snapshot of
plain values (copies) and swaps one reference; a scrape turns the latest snapshot into
metric families.  What the ventilator counts between ticks (tasks finished by state,
queue and name; run and queue times) is kept by :class:`TaskCounts`, on the loop.

prometheus_client is in the ``web`` extra: :func:`require` says so in one line.
"""

from __future__ import annotations

import bisect
import collections
import logging
import time
from typing import Any, Iterator, Optional

log = logging.getLogger("zq.metrics")

NAME_LABELS = 200  # task names with their own label; later ones are counted as "other"
OTHER = "other"
#: histogram buckets (seconds), for run and queue times
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


def require() -> None:
    """ImportError with the install command when prometheus_client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ImportError('--metrics-port needs prometheus_client: pip install "zq[web]"') from None


class Histogram:
    """Bucket counts, a sum and a count (kept on the loop; copied into snapshots)."""

    __slots__ = ("counts", "sum", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last: above every bucket
        self.sum = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.n += 1

    def snapshot(self) -> tuple[list[int], float, int]:
        return list(self.counts), self.sum, self.n


class TaskCounts:
    """What the ventilator's metrics count as tasks finish (on its loop).

    Task names are a bounded label set: the first ``NAME_LABELS`` names seen keep their
    own label, the others share ``"other"`` (so every counter only ever grows)."""

    def __init__(self) -> None:
        self.total: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.names: set[str] = set()
        self.run = Histogram()
        self.queue = Histogram()

    def label(self, name: str) -> str:
        if name in self.names:
            return name
        if len(self.names) < NAME_LABELS:
            self.names.add(name)
            return name
        return OTHER

    def finished(self, state: str, queue: str, name: str, submitted_at: float, started_at: Optional[float],
                 finished_at: float) -> None:
        self.total[(state, queue, self.label(name))] += 1
        if started_at is not None:
            self.queue.observe(started_at - submitted_at)
            self.run.observe(finished_at - started_at)


def ventilator_snapshot(v: Any, counts: TaskCounts) -> dict:
    """The ventilator's metrics as plain values (built on its loop; O(workers + groups))."""
    queued, _ = v.tasks.by_queue()
    depth = {q: n for q, n in queued.items()}
    for q in v.dispatch.paused:
        depth.setdefault(q, 0)
    held, busy = {}, 0
    for w in v.workers.values():
        held[w.id] = len(w.inflight)
        busy += w.slots_busy(v.tasks)  # as the worker says (STARTED's busy)
    c = v.counters
    return {
        "tasks_total": dict(counts.total), "run": counts.run.snapshot(), "queue": counts.queue.snapshot(),
        "queue_depth": depth, "workers_online": len(v.workers), "slots_busy": busy, "held": held,
        "workers_lost": dict(v.workers_side.lost_by_cause),
        "retries": c.get("retried", 0), "lost_attempts": c.get("lost_attempts", 0),
        "bad_messages": c.get("bad_messages", 0), "lag": v.lag.recent(), "lag_max": v.lag.worst,
    }


def sink_snapshot(s: Any) -> dict:
    return {"retained": len(s.retained), "retained_bytes": s.retained_bytes,
            "results": s.counters.get("results", 0), "bad_messages": s.counters.get("bad_messages", 0),
            "undelivered": sum(len(q) for q in s.undelivered.values())}


def worker_snapshot(w: Any) -> dict:
    """A worker's metrics as plain values (built on its loop)."""
    return {"id": w.id, "slots": w.slots, "running": w.busy_slots(), "prefetched": len(w.local),
            "awaiting_ack": len(w.done.awaiting), "finished": dict(w.done.by_state),
            "run": w.run_hist.snapshot(), "retries": w.counters.get("retries", 0),
            "lost_in_executor": w.counters.get("lost_in_executor", 0),
            "bad_messages": w.counters.get("bad_messages", 0),
            "ventilator_silent": time.monotonic() - w.vent.last_recv}


class SnapshotCollector:
    """Turns the latest snapshot into metric families (in the scrape's thread)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.snapshot: Optional[dict] = None  # replaced whole by the loop, never changed

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot
        if snap is None:
            return
        if self.role == "ventilator":
            yield from _ventilator_families(snap)
        elif self.role == "worker":
            yield from _worker_families(snap)
        else:
            yield from _sink_families(snap)


def _gauge(name: str, doc: str, value: float) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, doc, value=float(value))


def _histogram(name: str, doc: str, snap: tuple[list[int], float, int]) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    counts, total, _ = snap
    cum, buckets = 0, []
    for bound, n in zip([*map(str, BUCKETS), "+Inf"], counts):
        cum += n
        buckets.append((bound, float(cum)))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


def _ventilator_families(s: dict) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    tasks = CounterMetricFamily("zq_tasks", "Tasks finished, by final state, queue and name (the first "
                                f"{NAME_LABELS} names; later ones as '{OTHER}')", labels=["state", "queue", "name"])
    for (state, queue, name), n in sorted(s["tasks_total"].items()):
        tasks.add_metric([state, queue, name], float(n))
    yield tasks
    yield _histogram("zq_task_run_seconds", "Run time of finished tasks (STARTED to finished)", s["run"])
    yield _histogram("zq_task_queue_seconds", "Queue time of finished tasks (submitted to STARTED)", s["queue"])
    depth = GaugeMetricFamily("zq_queue_depth", "Tasks waiting in the queue (not sent to a worker)",
                              labels=["queue"])
    for q, n in sorted(s["queue_depth"].items()):
        depth.add_metric([q], float(n))
    yield depth
    yield _gauge("zq_workers_online", "Workers the ventilator hears from", s["workers_online"])
    yield _gauge("zq_slots_busy", "Executor slots running a task", s["slots_busy"])
    held = GaugeMetricFamily("zq_worker_tasks_held", "Tasks the worker holds (running and prefetched)",
                             labels=["worker"])
    for w, n in sorted(s["held"].items()):
        held.add_metric([w], float(n))
    yield held
    lost = CounterMetricFamily("zq_workers_lost", "Workers declared lost, by cause", labels=["cause"])
    for cause in sorted({"heartbeat", "connection", *s["workers_lost"]}):
        lost.add_metric([cause], float(s["workers_lost"].get(cause, 0)))
    yield lost
    yield CounterMetricFamily("zq_retries", "Task attempts retried after an error", value=float(s["retries"]))
    yield CounterMetricFamily("zq_lost_attempts", "Task attempts lost with their worker or process",
                              value=float(s["lost_attempts"]))
    yield CounterMetricFamily("zq_bad_messages", "Malformed messages dropped", value=float(s["bad_messages"]))
    yield _gauge("zq_ventilator_loop_lag_seconds", "Longest turn of the ventilator's loop over the last 1-2 s",
                 s["lag"])
    yield _gauge("zq_ventilator_loop_lag_max_seconds", "Longest turn of the ventilator's loop since start",
                 s["lag_max"])


def _sink_families(s: dict) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily

    yield _gauge("zq_sink_results_retained", "Results the sink retains", s["retained"])
    yield _gauge("zq_sink_retained_bytes", "Bytes of the values the sink retains", s["retained_bytes"])
    yield _gauge("zq_sink_results_undelivered", "Results waiting for their client", s["undelivered"])
    yield CounterMetricFamily("zq_sink_results", "Results recorded", value=float(s["results"]))
    yield CounterMetricFamily("zq_bad_messages", "Malformed messages dropped", value=float(s["bad_messages"]))


def _worker_families(s: dict) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily

    yield _gauge("zq_worker_slots", "Executor slots of this worker", s["slots"])
    yield _gauge("zq_worker_slots_busy", "Slots running a task", s["running"])
    yield _gauge("zq_worker_tasks_prefetched", "Tasks held here, not started", s["prefetched"])
    yield _gauge("zq_worker_results_awaiting_ack", "Results sent to the sink, not acknowledged yet",
                 s["awaiting_ack"])
    done = CounterMetricFamily("zq_worker_tasks", "Tasks this worker finished, by final state", labels=["state"])
    for state, n in sorted(s["finished"].items()):
        done.add_metric([state], float(n))
    yield done
    yield _histogram("zq_worker_task_run_seconds", "Run time of the tasks this worker ran", s["run"])
    yield CounterMetricFamily("zq_worker_retries", "Attempts this worker sent back to be retried",
                              value=float(s["retries"]))
    yield CounterMetricFamily("zq_worker_lost_in_executor", "Attempts lost with an executor process",
                              value=float(s["lost_in_executor"]))
    yield CounterMetricFamily("zq_bad_messages", "Malformed messages dropped", value=float(s["bad_messages"]))
    yield _gauge("zq_worker_ventilator_silent_seconds", "Seconds since the ventilator was last heard",
                 s["ventilator_silent"])


class MetricsServer:
    """prometheus_client's HTTP server in a daemon thread, serving one node's snapshot."""

    def __init__(self, role: str, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        self.collector = SnapshotCollector(role)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)  # type: ignore[arg-type]
        try:
            self.httpd, self.thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            from zq.errors import BindError

            raise BindError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        self.port = self.httpd.server_port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/metrics"

    def publish(self, snapshot: dict) -> None:
        self.collector.snapshot = snapshot  # one reference swapped: the scrape sees one whole snapshot

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
