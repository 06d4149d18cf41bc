"""A small virtual network of Linux network namespaces, for multi-host tests and nemesis runs.

    ┌──────── zqmh-SFX-br (namespace) ────────┐
    │  bridge zbSFX ── zbSFXvent ── veth ─────┼──▶ zqmh-SFX-vent    znSFXvent 10.231.X.1
    │              ── zbSFXsink ── veth ──────┼──▶ zqmh-SFX-sink    znSFXsink 10.231.X.2
    │              ── …                       │    …
    └─────────────────────────────────────────┘

Every namespace, veth and the bridge live in namespaces created here (the root
namespace is not touched), names carry a random suffix, and the /24 is picked
at random from 10.231.0.0/16 avoiding any prefix the root namespace routes.
``VirtualNet.down()`` kills whatever still runs in those namespaces (only
processes we started can be there) and deletes them, which removes the veths
and the bridge with them.  ``link_down(host)`` pulls a host's cable at the
bridge: the host keeps its address and route, its packets are silently lost.

Nodes run with ``ip netns exec NS python -m zq.nodes ROLE …`` (``NsNodeProcess``,
like :class:`zq._embedded.NodeProcess`: wait for the ``zq ROLE READY k=v``
line); ``ip netns exec`` execs the command, so the child's pid is the node's.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import random
import secrets
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, Optional, Sequence

from zq._embedded import NodeProcess

IP = shutil.which("ip") or "/usr/sbin/ip"


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
    proc = subprocess.run([IP, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> Optional[str]:
    """Why network-namespace tests cannot run here, or None if they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network-namespace tests need root (ip netns add)"
    if not os.path.exists(IP):
        return "the `ip` command (iproute2) is not installed"
    probe = f"zqmh-probe-{secrets.token_hex(3)}"
    try:
        r = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` is unavailable: {exc}"
    if r.returncode != 0:
        return f"`ip netns add` is not permitted here: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _routed_prefixes() -> list[ipaddress.IPv4Network]:
    """IPv4 prefixes the root namespace already routes or holds (to stay clear of them)."""
    nets: list[ipaddress.IPv4Network] = []
    for args in (("-4", "route", "show", "table", "all"), ("-4", "-o", "addr", "show")):
        try:
            out = _ip(*args, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for word in out.split():
            try:
                net = ipaddress.ip_network(word, strict=False)
            except ValueError:
                continue
            if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
                nets.append(net)
    return nets


def pick_subnet() -> ipaddress.IPv4Network:
    """A random 10.231.X.0/24 that overlaps nothing the root namespace knows of."""
    used = _routed_prefixes()
    choices = list(range(1, 255))
    random.shuffle(choices)
    for x in choices:
        net = ipaddress.IPv4Network(f"10.231.{x}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsError("no free 10.231.X.0/24 subnet")


class VirtualNet:
    """Hosts (one namespace each) on one bridge (in a namespace of its own)."""

    def __init__(self, hosts: Sequence[str]) -> None:
        for h in hosts:
            if not h.isalnum() or len(h) > 4:
                raise ValueError(f"host name {h!r}: 1-4 letters/digits (it goes into interface names)")
        self.sfx = secrets.token_hex(3)
        self.subnet = pick_subnet()
        self.hosts = list(hosts)
        self.bridge_ns = f"zqmh-{self.sfx}-br"
        self.bridge = f"zb{self.sfx}"
        self.ns = {h: f"zqmh-{self.sfx}-{h}" for h in hosts}
        self.addr = {h: str(self.subnet.network_address + i + 1) for i, h in enumerate(hosts)}
        self.outer = {h: f"zb{self.sfx}{h}" for h in hosts}  # bridge side of the veth (≤ 12 chars)
        self.inner = {h: f"zn{self.sfx}{h}" for h in hosts}  # host side
        self.created: list[str] = []
        self.processes: list[Any] = []  # NsNodeProcess / Popen started in our namespaces

    # -- life cycle -------------------------------------------------------------------
    def up(self) -> "VirtualNet":
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _up(self) -> None:
        self._add_ns(self.bridge_ns)
        br = ("-n", self.bridge_ns)
        _ip(*br, "link", "add", self.bridge, "type", "bridge")
        _ip(*br, "link", "set", self.bridge, "up")
        plen = str(self.subnet.prefixlen)
        for h in self.hosts:
            ns = self.ns[h]
            self._add_ns(ns)
            _ip(*br, "link", "add", self.outer[h], "type", "veth", "peer", "name", self.inner[h], "netns", ns)
            _ip(*br, "link", "set", self.outer[h], "master", self.bridge)
            _ip(*br, "link", "set", self.outer[h], "up")
            _ip("-n", ns, "addr", "add", f"{self.addr[h]}/{plen}", "dev", self.inner[h])
            _ip("-n", ns, "link", "set", self.inner[h], "up")

    def down(self) -> list[str]:
        """Stop every process we started here, delete every namespace; problems as text."""
        problems: list[str] = []
        for p in self.processes:
            try:
                if isinstance(p, NsNodeProcess):
                    p.kill()
                elif p.poll() is None:
                    p.kill()
                    p.wait(10)
            except Exception as exc:  # keep tearing down
                problems.append(f"killing {p}: {exc}")
        for name in reversed(self.created):
            # anything still inside (a grandchild of a node) was started by us: kill it by pid
            try:
                pids = _ip("netns", "pids", name, check=False).stdout.split()
            except (OSError, subprocess.SubprocessError):
                pids = []
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            try:
                r = _ip("netns", "del", name, check=False)
                if r.returncode != 0:
                    problems.append(f"ip netns del {name}: {r.stderr.strip()}")
            except (OSError, subprocess.SubprocessError) as exc:
                problems.append(f"ip netns del {name}: {exc}")
        self.created.clear()
        left = [n for n in self.namespaces() if n in set(self.ns.values()) | {self.bridge_ns}]
        if left:
            problems.append(f"namespaces left behind: {left}")
        return problems

    @staticmethod
    def namespaces() -> list[str]:
        out = _ip("netns", "list", check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    # -- links ------------------------------------------------------------------------
    def _link(self, host: str, side: str, state: str) -> None:
        if side == "bridge":
            _ip("-n", self.bridge_ns, "link", "set", self.outer[host], state)
        elif side == "host":
            _ip("-n", self.ns[host], "link", "set", self.inner[host], state)
        else:
            raise ValueError(f"side must be 'bridge' or 'host', not {side!r}")

    def link_down(self, host: str, side: str = "bridge") -> None:
        """Cut ``host`` off.  ``side="bridge"``: its port on the bridge goes down, so its
        packets are silently lost (a pulled cable, a dead switch port).  ``side="host"``:
        its own interface goes down, so it loses its route and its sends fail at once."""
        self._link(host, side, "down")

    def link_up(self, host: str, side: str = "bridge") -> None:
        self._link(host, side, "up")

    # -- running things in a host -----------------------------------------------------
    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return [IP, "netns", "exec", self.ns[host], *argv]

    def run(self, host: str, argv: Sequence[str], timeout: float = 30.0, **kw: Any) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(host, argv), capture_output=True, text=True, timeout=timeout, **kw)

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        p = subprocess.Popen(self.argv(host, argv), start_new_session=True, **kw)
        self.processes.append(p)
        return p

    def node(self, host: str, args: Sequence[str], env: Optional[dict[str, str]] = None,
             name: str = "") -> "NsNodeProcess":
        """A started ``python -m zq.nodes ARGS`` in ``host``'s namespace (wait_ready() for READY)."""
        n = NsNodeProcess(self.ns[host], args, env, name=name or host)
        self.processes.append(n)
        return n.start()


class NsNodeProcess(NodeProcess):
    """``ip netns exec NS python -m zq.nodes ARGS``, its stderr watched for ``zq ROLE READY k=v``
    (``ip netns exec`` execs the command, so ``pid`` is the node's own)."""

    def __init__(self, ns: str, args: Sequence[str], env: Optional[dict[str, str]] = None,
                 name: str = "") -> None:
        super().__init__(args, env, name=name, prefix=[IP, "netns", "exec", ns])
        self.ns = ns


class LineReader:
    """Lines from a pipe, read by a thread, taken with deadlines."""

    EOF = object()

    def __init__(self, stream: Any, name: str = "") -> None:
        self.q: "queue.Queue[Any]" = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), name=f"lines-{name}", daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.q.put(line.rstrip("\n"))
        self.q.put(self.EOF)

    def next(self, deadline: float) -> Optional[str]:
        """The next line; None at end of stream; TimeoutError past the (monotonic) deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no line before the deadline")
        try:
            item = self.q.get(timeout=left)
        except queue.Empty:
            raise TimeoutError("no line before the deadline") from None
        if item is self.EOF:
            self.q.put(item)  # stay at EOF
            return None
        self.seen.append(item)
        return item
