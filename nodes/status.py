"""``zq status``: ask the ventilator and the sink for their stats and print them."""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import zmq

from zq import protocol as P
from zq._sockets import LinkMonitor, close_link, dealer
from zq.config import Config
from zq.errors import ZqError
from zq.security import Keys

from .when import local


def _ask(ctx: zmq.Context, endpoint: str, node: str, timeout: float, keys: Any = None) -> Any:
    s = dealer(ctx, endpoint, f"status-{os.urandom(4).hex()}".encode(), keys=keys, server=node, connect=False)
    mon = LinkMonitor(s, endpoint)  # says why a secured node will not talk to us: attached before
    s.connect(endpoint)  # connecting, so that it sees the first handshake (a refusal is not retried)
    try:
        s.send_multipart(P.pack(P.REQUEST, {"req": 1, "op": "stats"}))
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(s, zmq.POLLIN)
        poller.register(mon.socket, zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            events = dict(poller.poll(int(left * 1000))) if left > 0 else {}
            if mon.socket in events:
                mon.reconnected()
                if mon.refused:
                    raise ZqError(f"the {node} at {endpoint} refused the handshake (keys?): {mon.refused}")
            if s in events:
                msg = P.unpack(s.recv_multipart())
                if msg.command == P.REPLY and msg.header.get("req") == 1:
                    return msg.header.get("data")
            elif not events:
                raise ZqError(f"the {node} at {endpoint} did not answer within {timeout:g}s")
    finally:
        close_link(s, mon)


def fetch(cfg: Config, timeout: float = 5.0) -> dict:
    keys = Keys.load(cfg.keys, cfg.key_name or "client", ("ventilator", "sink")) if cfg.keys else None
    ctx = zmq.Context()
    try:
        return {"ventilator": _ask(ctx, cfg.ventilator_clients, "ventilator", timeout, keys),
                "sink": _ask(ctx, cfg.sink_endpoint, "sink", timeout, keys)}
    finally:
        ctx.destroy(0)


def render(data: dict) -> str:
    v, s = data["ventilator"], data["sink"]
    c = v.get("counters", {})
    sc = s.get("counters", {})
    lines = [
        f"ventilator {v['endpoints'].get('clients')} on {v['host']}  up {v['uptime']:.0f}s  "
        f"{v['tasks_per_second']:.1f} tasks/s",
        f"security   {'CURVE (authenticated, encrypted)' if v.get('secured') and s.get('secured') else 'NONE (no keys: loopback or --insecure)'}",
        f"sink       {s['endpoints'].get('endpoint')} on {s['host']}  "
        f"{s['results_per_second']:.1f} results/s  retained {s['retained']}  undelivered {s['undelivered']}",
        _sink_link(v.get("sink_link")),
        "",
        f"tasks: submitted {c.get('submitted', 0)}  done {c.get('done', 0)}  canceled {c.get('canceled', 0)}  "
        f"retried {c.get('retried', 0)}  lost attempts {c.get('lost_attempts', 0)}",
        f"results: recorded {sc.get('results', 0)}  duplicates dropped {sc.get('duplicates_dropped', 0)}",
        f"bad messages: ventilator {c.get('bad_messages', 0)}  sink {sc.get('bad_messages', 0)}"
        + (f"  refused handshakes: ventilator {c['handshakes_refused']}  sink {sc.get('handshakes_refused', 0)}"
           if "handshakes_refused" in c else "")
        + (f"  failed handshakes: ventilator {c['handshakes_failed']}  sink {sc.get('handshakes_failed', 0)}"
           if "handshakes_failed" in c else ""),
        "",
        f"{'QUEUE':<20} {'QUEUED':>8} {'RUNNING':>8}  WORKERS",
    ]
    for q, info in v.get("queues", {}).items():
        lines.append(f"{q:<20} {info['queued']:>8} {info['running']:>8}  {'yes' if info['served'] else 'NONE'}")
    lines += ["", f"{'WORKER':<36} {'HOST':<16} {'EXEC':<8} {'LOAD':>9} {'DONE':>8}  QUEUES"]
    for w in v.get("workers", []):
        load = _load(w)
        lines.append(f"{w['id']:<36} {w['host']:<16} {w['executor']:<8} {load:>9} {w['done']:>8}  "
                     f"{','.join(w['queues'])}")
    if not v.get("workers"):
        lines.append("(no workers)")
    for w in v.get("lost_workers") or []:
        lines.append(f"lost: {w['id']} on {w['host']} (pid {w['pid']}) at {local(w['lost_at'])}: {w['cause']}")
    return "\n".join(lines)


def _load(w: dict) -> str:
    """``running/slots``, and ``+N`` tasks prefetched (sent, not started)."""
    pre = w.get("prefetched")
    return f"{w['running']}/{w['concurrency']}" + (f" +{pre}" if pre else "")


def _sink_link(link: Any) -> str:
    """The ventilator's own link to the sink (it sends WorkerLost and cancellations there)."""
    if not isinstance(link, dict):
        return "sink link (not reported by this ventilator)"
    if link.get("up"):
        return f"sink link ventilator -> {link.get('endpoint')}  up"
    heard = "" if link.get("heard") else ", never heard from it"
    return (f"sink link ventilator -> {link.get('endpoint')}  DOWN (silent {link.get('silent', 0):.0f}s{heard}; "
            f"{link.get('waiting', 0)} result(s) waiting; their clients get NodeUnreachable)")


# -- zq status --watch ---------------------------------------------------------------------


def view(data: dict, interval: float, error: Optional[str] = None) -> Any:
    """A rich renderable of the cluster: the summary, then queues and workers as tables."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    if error is not None:
        return Panel(Text(error, style="bold red"), title="zq status (retrying)")
    v = data["ventilator"]
    summary = "\n".join(render(data).split("\n\n")[0:2])
    queues = Table(title="queues", expand=True)
    for col in ("queue", "queued", "running", "paused", "served"):
        queues.add_column(col, justify="right" if col in ("queued", "running") else "left")
    for q, info in v.get("queues", {}).items():  # names come from clients and workers: never markup
        queues.add_row(Text(q), str(info["queued"]), str(info["running"]), "PAUSED" if info.get("paused") else "",
                       "yes" if info["served"] else Text("NONE", style="red"))
    workers = Table(title=f"workers ({len(v.get('workers', []))})", expand=True)
    for col in ("worker", "host", "pid", "executor", "load", "done", "queues"):
        workers.add_column(col, justify="right" if col in ("pid", "load", "done") else "left")
    for w in v.get("workers", []):
        workers.add_row(Text(str(w["id"])), Text(str(w["host"])), str(w.get("pid", "")), Text(str(w["executor"])),
                        _load(w), str(w["done"]), Text(",".join(w["queues"])))
    lag = v.get("loop", {}).get("lag")
    foot = Text(f"every {interval:g}s · ventilator loop lag {lag * 1000:.1f} ms · Ctrl-C to stop"
                if isinstance(lag, (int, float)) else f"every {interval:g}s · Ctrl-C to stop", style="dim")
    return Group(Panel(Text(summary), title="zq status"), queues, workers, foot)


def watch(cfg: Config, interval: float, timeout: float, count: Optional[int] = None) -> None:
    """Refresh the view every ``interval`` seconds until Ctrl-C (or ``count`` refreshes).  A
    node that does not answer is shown as an error and asked again: watching survives restarts."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    shown = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while count is None or shown < count:
            started = time.monotonic()
            try:
                live.update(view(fetch(cfg, timeout), interval), refresh=True)
            except ZqError as exc:
                live.update(view({}, interval, str(exc)), refresh=True)
            shown += 1
            if count is not None and shown >= count:
                break
            time.sleep(max(0.0, interval - (time.monotonic() - started)))  # the refresh period itself
