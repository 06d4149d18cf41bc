"""``zq tasks ls|show|requeue|cancel|forget|pause|resume|enable|disable``: the task admin CLI.

Each command connects as a client (same endpoints and keys as ``zq status``),
makes one request to the ventilator, prints the answer and exits.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

import click

import zq
from zq.errors import ConfigError, ZqError

from .when import duration, local, parse_since

conn_opts = [
    click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file."),
    click.option("--ventilator", "vent", help="The ventilator's clients endpoint."),
    click.option("--sink", help="The sink's endpoint."),
    click.option("--keys", type=click.Path(file_okay=False), default=None, help="CURVE key directory."),
    click.option("--key-name", default=None, help="Own key pair in --keys (default: client)."),
]


class ConfigProblem(click.ClickException):
    """A configuration mistake (keys, config file): exit code 3, as for the nodes."""

    exit_code = 3


def connection(f: Callable) -> Callable:
    for opt in reversed(conn_opts):
        f = opt(f)
    return f


def _client(config_path: Optional[str], vent: Optional[str], sink: Optional[str], keys: Optional[str],
            key_name: Optional[str]) -> zq.Client:
    try:
        cfg = zq.load_config(config_path, {"ventilator_clients": vent, "sink_endpoint": sink, "keys": keys,
                                           "key_name": key_name})
        return zq.Client(cfg, unreachable_timeout=10.0)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None


def _run(conn: tuple, action: Callable[[zq.Client], Any]) -> Any:
    client = _client(*conn)
    try:
        return action(client)
    except (ZqError, TimeoutError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    finally:
        client.shutdown(wait=False)


class Since(click.ParamType):
    """``--since``: 30m, 1h, 2d, an ISO date (local time) or Unix seconds."""

    name = "WHEN"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_since(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.group("tasks")
def tasks() -> None:
    """List, inspect and manage tasks and queues."""


@tasks.command("ls")
@connection
@click.option("--state", type=click.Choice([s.value for s in zq.TaskState]), default=None)
@click.option("--queue", default=None)
@click.option("--name", default=None)
@click.option("--since", type=Since(), default=None,
              help="Finished (or, unfinished, submitted) since: 30m, 1h, 2d, 2026-12-03T08:30, Unix seconds.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0)
@click.option("--forgotten", is_flag=True, help="Include forgotten tasks.")
@click.option("--json", "as_json", is_flag=True)
def ls(config_path: Optional[str], vent: Optional[str], sink: Optional[str], keys: Optional[str],
       key_name: Optional[str], state: Optional[str], queue: Optional[str], name: Optional[str],
       since: Optional[float], limit: int, offset: int, forgotten: bool, as_json: bool) -> None:
    """List tasks, newest first."""
    rows = _run((config_path, vent, sink, keys, key_name), lambda c: c.list_tasks(
        state=state, queue=queue, name=name, since=since, limit=limit, offset=offset, forgotten=forgotten))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'TASK':<40} {'STATE':<9} {'QUEUE':<12} {'ATT':>3} {'SUBMITTED':<19}  NAME")
    for r in rows:
        click.echo(f"{r['task_id']:<40} {r['state']:<9} {r['queue']:<12} {r['attempts']:>3} "
                   f"{local(r['submitted_at']):<19}  {r['name']}")


@tasks.command("show")
@connection
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="the raw dict, as JSON")
def show(config_path: Optional[str], vent: Optional[str], sink: Optional[str], keys: Optional[str],
         key_name: Optional[str], task_id: str, as_json: bool) -> None:
    """Everything the ventilator knows of one task: times in local time, its error and
    traceback, the causes of its lost attempts."""
    t = _run((config_path, vent, sink, keys, key_name), lambda c: c.show_task(task_id))
    if as_json:
        click.echo(json.dumps(t, indent=2))
    else:
        click.echo(describe(t))


def describe(t: dict) -> str:
    """One task (``show_task``'s dict) for people."""
    def line(label: str, value: Any) -> None:
        if value not in (None, "", []):
            out.append(f"{label + ':':<12} {value}")

    out: list[str] = []
    line("task", t.get("task_id"))
    line("name", t.get("name"))
    line("args", t.get("args_repr"))
    line("queue", t.get("queue"))
    line("state", t.get("state"))
    sub, started, fin = t.get("submitted_at"), t.get("started_at"), t.get("finished_at")
    line("submitted", local(sub))
    if started:
        line("started", f"{local(started)} (waited {duration(started - sub) if sub else '-'})")
    if fin:
        took = f"ran {duration(fin - started)}" if started else f"{duration(fin - sub) if sub else '-'} after submit"
        line("finished", f"{local(fin)} ({took})")
    line("attempts", t.get("attempts"))
    where = t.get("worker") or ""
    if t.get("host"):
        where += f" on {t['host']} pid {t.get('pid')}"
    line("worker", where)
    line("parent", t.get("parent"))
    if t.get("root") and t.get("root") != t.get("task_id"):
        line("root", t.get("root"))
    if t.get("progress"):
        line("progress", t.get("progress"))
    if t.get("error_type") or (t.get("error") and t.get("error") != t.get("state")):
        line("error", f"{t.get('error_type') or t.get('error')}: {t.get('message') or ''}".rstrip(": "))
    for i, cause in enumerate(t.get("lost") or [], 1):
        line(f"lost #{i}", cause)
    if t.get("traceback"):
        out.append("")
        out.append(t["traceback"].rstrip())
    if t.get("forgotten"):
        out.append("(forgotten: hidden from lists)")
    return "\n".join(out)


def _simple(cmd: str, arg: str, doc: str, action: Callable[[zq.Client, str], Any],
            say: Callable[[str, Any], str]) -> None:
    @tasks.command(cmd, help=doc)
    @connection
    @click.argument(arg)
    def command(config_path: Optional[str], vent: Optional[str], sink: Optional[str], keys: Optional[str],
                key_name: Optional[str], **kw: str) -> None:
        value = kw[arg]
        out = _run((config_path, vent, sink, keys, key_name), lambda c: action(c, value))
        click.echo(say(value, out))


_simple("requeue", "task_id", "Run a failed or cancelled task again (prints the new task id).",
        lambda c, t: c.requeue(t), lambda t, new: new)
_simple("cancel", "task_id", "Cancel a queued (or, on a process worker, running) task.",
        lambda c, t: c.cancel(t), lambda t, ok: f"{t}: {'cancelled' if ok else 'not cancelled (finished or running in a thread)'}")
_simple("forget", "task_id", "Hide a finished task from listings (kept in the history).",
        lambda c, t: c.forget(t), lambda t, ok: f"{t}: {'forgotten' if ok else 'not in the history'}")
_simple("pause", "queue", "Stop dispatching a queue; its tasks wait (PAUSED).",
        lambda c, q: c.pause(q), lambda q, n: f"queue {q} paused ({n} task(s) waiting)")
_simple("resume", "queue", "Dispatch a paused queue again.",
        lambda c, q: c.resume(q), lambda q, n: f"queue {q} resumed ({n} task(s) waiting)")
_simple("disable", "name", "Let tasks of this name wait (PAUSED) until enabled.",
        lambda c, n: c.disable_task(n), lambda n, _: f"task {n} disabled")
_simple("enable", "name", "Run tasks of this name again.",
        lambda c, n: c.enable_task(n), lambda n, _: f"task {n} enabled")
