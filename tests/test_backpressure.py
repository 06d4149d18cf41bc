"""A client that floods the cluster, then stops reading its results, stalls nobody else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from .conftest import connect

FLOOD = textwrap.dedent("""
    import sys, time, zq
    def noop(x):
        return x
    cfg = zq.load_config(None, {"ventilator_clients": sys.argv[1], "sink_endpoint": sys.argv[2]})
    client = zq.Client(cfg)
    n = int(sys.argv[3])
    futs = [client.submit(noop, i) for i in range(n)]
    # all of them at the ventilator before the test freezes us
    while client.stats()["ventilator"]["counters"].get("submitted", 0) < n:
        time.sleep(0.05)  # sleep-ok: polling the ventilator's counter
    print("SUBMITTED", flush=True)
    futs[-1].result(120)
    print("DONE", flush=True)
    sys.stdin.read()  # then stay alive, not reading anything more, until killed
""")


def square(x):
    return x * x


def test_flooding_client_that_stops_reading_stalls_no_one(cluster, tmp_path):
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    flood = subprocess.Popen([sys.executable, str(script), cluster.endpoints["clients"],
                              cluster.endpoints["sink"], "60000"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert flood.stdout.readline().strip() == "SUBMITTED"
        flood.send_signal(signal.SIGSTOP)  # it stops reading: its results pile up at the sink
        other = connect(cluster)
        try:
            # another client is served while 60,000 tasks of the frozen one go through
            assert [other.submit(square, i).result(timeout=30) for i in range(20)] == [i * i for i in range(20)]
            stats = other.stats()
            assert stats["ventilator"]["counters"]["submitted"] >= 60_000 + 20
        finally:
            other.shutdown()
        flood.send_signal(signal.SIGCONT)
        assert flood.stdout.readline().strip() == "DONE"  # and it gets all of its results later
    finally:
        flood.kill()
        flood.wait(10)
    assert all(n.alive() for n in cluster.nodes())
