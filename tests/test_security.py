"""CURVE security: only listed keys get anything executed; safe defaults for binding."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import zmq

import zq
from zq import protocol as P
from zq._embedded import parse_ready
from zq.security import generate
from zq.serialize import pack_args, pickle_function

from .conftest import run_zq, zq_script


def write_marker(path):
    with open(path, "w") as f:
        f.write("ran")
    return path


def square(x):
    return x * x


@pytest.fixture
def keydir(tmp_path):
    d = str(tmp_path / "keys")
    generate(d)
    generate(d, name="mallory", role="client")
    os.remove(os.path.join(d, "clients", "mallory.key"))  # a key nobody listed
    return d


@pytest.fixture
def secured(make_cluster, keydir):
    return make_cluster(workers=1, executor="thread", concurrency=1, env={"ZQ_SECURITY_KEYS": keydir})


def client_for(cluster, **kw):
    cfg = zq.load_config(None, {"ventilator_clients": cluster.endpoints["clients"],
                                "sink_endpoint": cluster.endpoints["sink"], "heartbeat_interval": 0.2})
    return zq.Client(cfg, unreachable_timeout=kw.pop("unreachable_timeout", 60.0), **kw)


def test_secured_cluster_runs_a_job_and_says_so(secured, keydir):
    with client_for(secured, keys=keydir) as c:
        assert list(c.map(square, range(50), timeout=30)) == [x * x for x in range(50)]
        stats = c.stats()
    assert stats["ventilator"]["secured"] and stats["sink"]["secured"]
    out = run_zq("status", "--ventilator", secured.endpoints["clients"], "--sink", secured.endpoints["sink"],
                 "--keys", keydir)
    assert out.returncode == 0, out.stderr
    assert "CURVE" in out.stdout


@pytest.mark.parametrize("who", ["unknown key", "no key", "worker key"])
def test_unauthorised_clients_get_nothing_executed(secured, keydir, tmp_path, who):
    marker = tmp_path / "marker"
    kw = {"unknown key": {"keys": keydir, "key_name": "mallory"}, "no key": {},
          "worker key": {"keys": keydir, "key_name": "worker"}}[who]
    bad = client_for(secured, unreachable_timeout=2.0, **kw)
    try:
        fut = bad.submit(write_marker, str(marker))
        with pytest.raises(zq.NodeUnreachable):
            fut.result(timeout=30)
    finally:
        bad.shutdown(wait=False)
    # the legitimate client is still served; FIFO with one worker slot: had the bad task
    # been accepted, it would have run before this one
    with client_for(secured, keys=keydir) as good:
        assert good.submit(square, 7).result(timeout=30) == 49
        assert good.stats()["ventilator"]["counters"].get("submitted") == 1
    assert not marker.exists()


def test_plain_socket_cannot_submit(secured, keydir, tmp_path):
    marker = tmp_path / "marker"
    digest, fn = pickle_function(write_marker)
    spec = P.TaskSpec("raw-1", "raw", "default", digest, "raw", None, 0, None, 0.0,
                      args=pack_args((str(marker),), {}))
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(secured.endpoints["clients"])
    s.send_multipart(P.pack_tasks(P.SUBMIT, [spec], {digest: fn}))
    assert s.poll(500) == 0  # no answer: the handshake never completed
    s.close(0)
    ctx.term()
    with client_for(secured, keys=keydir) as good:
        assert good.submit(square, 3).result(timeout=30) == 9
        assert good.stats()["ventilator"]["counters"].get("submitted") == 1
    assert not marker.exists()


def test_client_key_cannot_register_as_worker(make_cluster, keydir):
    cluster = make_cluster(workers=0, env={"ZQ_SECURITY_KEYS": keydir})
    intruder = cluster.add_worker(["--key-name", "client"], wait=True)  # READY: it connected...
    with client_for(cluster, keys=keydir) as c:
        fut = c.submit(square, 2)
        # ...but the ventilator never admits it: no worker is registered, the task waits
        assert c.stats()["ventilator"]["workers"] == []
        assert c.get_status(fut.task_id) is zq.TaskState.QUEUED
        cluster.add_worker(wait=True)  # a real worker key takes it
        assert fut.result(timeout=30) == 4
        assert fut.envelope.worker != ""
    assert intruder.alive()


def test_bind_non_loopback_without_keys_is_refused(tmp_path):
    out = run_zq("sink", "--endpoint", "tcp://0.0.0.0:0")
    assert out.returncode != 0
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "--insecure" in lines[0] and "Traceback" not in out.stderr
    p = subprocess.Popen([zq_script(), "sink", "--endpoint", "tcp://0.0.0.0:0", "--insecure"],
                         stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in p.stderr:
            seen.append(line)
            if "READY" in line:
                break
        assert any("READY" in l for l in seen) and any("WITHOUT" in l for l in seen)
    finally:
        p.terminate()
        assert p.wait(20) == 0


def test_keys_in_config_file_work_like_flags(make_cluster, keydir, tmp_path):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(f'[security]\nkeys = "{keydir}"\n')
    cluster = make_cluster(workers=1, executor="thread", config=None, env={"ZQ_SECURITY_KEYS": keydir})
    c = zq.Client(str(cfg), ventilator=cluster.endpoints["clients"], sink=cluster.endpoints["sink"])
    try:
        assert c.submit(square, 6).result(timeout=30) == 36
    finally:
        c.shutdown()
    # and the server side from a config file: a sink with [security] keys is secured
    cfg2 = tmp_path / "sink.toml"
    cfg2.write_text(f'[sink]\nendpoint = "tcp://127.0.0.1:0"\n[security]\nkeys = "{keydir}"\n')
    p = subprocess.Popen([zq_script(), "sink", "--config", str(cfg2)], stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if "READY" in line:
                ep = parse_ready(line, "sink")["endpoint"]
                break
        out = run_zq("status", "--ventilator", cluster.endpoints["clients"], "--sink", ep,
                     "--keys", keydir, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["sink"]["secured"] is True
    finally:
        p.terminate()
        p.wait(20)


def test_results_the_ventilator_decides_reach_clients(secured, keydir):
    """A queued task cancelled is finished by the ventilator itself, which sends its result
    through the sink: the sink must admit the ventilator's key (it is in no list)."""
    import concurrent.futures

    with client_for(secured, keys=keydir) as owner, client_for(secured, keys=keydir) as other:
        fut = owner.submit_task(square, (5,), queue="nobody-serves-this", retain_result=True)
        assert owner.get_status(fut.task_id) is zq.TaskState.QUEUED
        assert fut.cancel()
        # the CANCELED result went ventilator -> sink, which retained it for anyone
        with pytest.raises(concurrent.futures.CancelledError):
            other.future_for(fut.task_id).result(timeout=10)
        with pytest.raises(concurrent.futures.CancelledError):
            owner.future_for(fut.task_id).result(timeout=10)
        assert owner.get_status(fut.task_id) is zq.TaskState.CANCELED
        counters = owner.stats()["sink"]["counters"]
        assert counters.get("results") == 1, counters
    # leaving both clients' with-blocks returned: nothing waits for a result that never came


NODE_ARGS = {
    "ventilator": ["ventilator", "--clients", "tcp://127.0.0.1:0", "--workers", "tcp://127.0.0.1:0",
                   "--sink", "tcp://127.0.0.1:9"],
    "sink": ["sink", "--endpoint", "tcp://127.0.0.1:0"],
    "worker": ["worker", "--ventilator", "tcp://127.0.0.1:9", "--sink", "tcp://127.0.0.1:9",
               "--executor", "thread"],
}
#: a server public key each role needs (removed, with the secret beside it, in "no server key")
SERVER_KEY = {"ventilator": "sink", "sink": "ventilator", "worker": "ventilator"}


def _break_keys(keydir, role, mistake):
    """Make the key directory wrong for ``role``; the file (or folder) the error must name."""
    if mistake == "no directory":
        return os.path.join(keydir, "nowhere")
    if mistake == "no own secret":
        path = os.path.join(keydir, f"{role}.key_secret")
        os.remove(path)
        return path
    if mistake == "no server key":
        server = SERVER_KEY[role]
        os.remove(os.path.join(keydir, f"{server}.key_secret"))
        path = os.path.join(keydir, f"{server}.key")
        os.remove(path)
        return path
    if mistake == "not a key file":
        path = os.path.join(keydir, f"{role}.key_secret")
        with open(path, "w") as f:
            f.write("this is not a certificate\n")
        return path
    if mistake == "public key as own":
        path = os.path.join(keydir, f"{role}.key_secret")
        with open(os.path.join(keydir, f"{role}.key")) as src, open(path, "w") as dst:
            dst.write(src.read())
        return path
    raise AssertionError(mistake)


def _one_line_naming(out, path):
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 3, (out.returncode, out.stderr)
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert path in lines[0], out.stderr
    return lines[0]


@pytest.mark.parametrize("mistake", ["no directory", "no own secret", "no server key", "not a key file",
                                     "public key as own"])
@pytest.mark.parametrize("role", ["ventilator", "sink", "worker"])
def test_key_mistakes_stop_a_node_with_one_line(keydir, role, mistake):
    """README: a configuration mistake stops the node with one line and exit code 3."""
    broken = _break_keys(keydir, role, mistake)
    directory = broken if mistake == "no directory" else keydir
    out = run_zq(*NODE_ARGS[role], "--keys", directory, timeout=20)
    line = _one_line_naming(out, broken)
    if mistake != "no directory":
        assert "Invalid certificate file" not in line, line
    if mistake in ("no own secret", "no server key"):
        assert "does not exist" in line, line


def test_key_mistakes_in_admin_commands(keydir):
    """``zq status`` and ``zq tasks`` (clients) say the same and exit 3 too."""
    missing = os.path.join(keydir, "nowhere")
    _one_line_naming(run_zq("status", "--keys", missing, "--timeout", "1"), missing)
    _one_line_naming(run_zq("tasks", "ls", "--keys", missing), missing)
    os.remove(os.path.join(keydir, "client.key_secret"))
    _one_line_naming(run_zq("status", "--keys", keydir, "--timeout", "1"),
                     os.path.join(keydir, "client.key_secret"))


def _public_key(keydir, name):
    return zmq.auth.load_certificate(os.path.join(keydir, f"{name}.key"))[0].decode()


@pytest.mark.parametrize("who", ["unknown key", "no key"])
def test_refused_handshake_is_said_not_silence(secured, keydir, who):
    """A client the cluster refuses learns why at once (not "did not answer"): the
    Python API, ``zq status`` and ``zq tasks``."""
    import time

    kw = {"keys": keydir, "key_name": "mallory"} if who == "unknown key" else {}
    flags = ["--keys", keydir, "--key-name", "mallory"] if who == "unknown key" else []
    bad = client_for(secured, **kw)
    try:
        t0 = time.monotonic()
        with pytest.raises(zq.NodeUnreachable, match=r"refused the handshake \(keys\?\)"):
            bad.stats()
        assert time.monotonic() - t0 < 5.0  # not the request timeout
    finally:
        bad.shutdown(wait=False)
    eps = ["--ventilator", secured.endpoints["clients"], "--sink", secured.endpoints["sink"]]
    out = run_zq("status", *eps, *flags, "--timeout", "8")
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "refused the handshake (keys?)" in last and "did not answer" not in out.stderr, out.stderr
    out = run_zq("tasks", "ls", *eps, *flags)
    assert out.returncode != 0 and "refused the handshake (keys?)" in out.stderr, out.stderr


def test_servers_log_refused_keys(secured, keydir):
    """The ventilator and the sink log a refused key (which, from where, on which
    endpoint), once per key and address in a while, and count every refusal."""
    from .lifecycle_tasks import wait_for

    mallory = _public_key(keydir, "mallory")
    for _ in range(3):
        out = run_zq("status", "--ventilator", secured.endpoints["clients"], "--sink", secured.endpoints["sink"],
                     "--keys", keydir, "--key-name", "mallory", "--timeout", "8")
        assert "refused the handshake" in out.stderr, out.stderr

    bad = client_for(secured, keys=keydir, key_name="mallory")  # zq status asked only the ventilator
    try:
        with pytest.raises(zq.NodeUnreachable, match="refused the handshake"):
            bad.stats()
        with pytest.raises(zq.NodeUnreachable, match="the sink .* refused the handshake"):
            bad.get_result("any")  # a request to the sink: once refused, the sink has logged it
    finally:
        bad.shutdown(wait=False)

    def refusals(node):
        return [line for line in node.lines if "refused CURVE key" in line and mallory in line]

    for node, endpoint in ((secured.ventilator, secured.endpoints["clients"]),
                           (secured.sink, secured.endpoints["sink"])):
        lines = wait_for(lambda: refusals(node), what=f"{node.name} logs the refused key")
        assert "WARNING" in lines[0] and "127.0.0.1" in lines[0] and endpoint in lines[0], lines
    assert len(refusals(secured.ventilator)) == 1  # four refusals, one line (rate-limited)
    with client_for(secured, keys=keydir) as good:
        stats = good.stats()
    assert stats["ventilator"]["counters"]["handshakes_refused"] >= 4, stats["ventilator"]["counters"]
    assert stats["sink"]["counters"]["handshakes_refused"] >= 1, stats["sink"]["counters"]
    out = run_zq("status", "--ventilator", secured.endpoints["clients"], "--sink", secured.endpoints["sink"],
                 "--keys", keydir)
    assert "refused handshakes: ventilator " in out.stdout, out.stdout
    assert "failed handshakes: ventilator " in out.stdout, out.stdout  # the ROUTER's own monitor
