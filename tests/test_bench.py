"""``python -m zq.bench --smoke --json FILE`` runs every section against a real cluster and
writes a JSON report with the expected keys.  No timing is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_bench_smoke_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    cp = subprocess.run([sys.executable, "-m", "zq.bench", "--smoke", "--no-progress", "--json", str(out),
                         "--peers", "dask,ray,ipyparallel,nosuchpeer"],
                        capture_output=True, text=True, timeout=110)
    assert out.exists(), cp.stderr[-3000:]
    data = json.loads(out.read_text())
    assert cp.returncode in (0, 1), cp.stderr[-3000:]
    assert cp.returncode == (1 if data["errors"] else 0)

    assert data["schema"] == "zq-bench/1" and data["mode"] == "smoke"
    for key in ("python", "pyzmq", "libzmq", "msgpack", "cloudpickle", "zq"):
        assert data["versions"][key], key
    assert data["host"]["cpu_count"] >= 1 and "cpu_model" in data["host"]

    z, b = data["zq"], data["baselines"]
    assert not [e for e in data["errors"] if "cluster" in e], data["errors"]
    for name in ("submit_thread", "submit_process", "map256_thread", "map256_process"):
        assert z["throughput"][name]["tasks_per_s"] > 0, (name, z["throughput"][name])
    for ex in ("thread", "process"):
        lat = z["latency"][ex]
        assert 0 < lat["p50_us"] <= lat["p99_us"]
    assert {(p["size"], p["kind"]) for p in z["payload"]} >= {
        (100, "bytes"), (100_000, "bytes"), (10_000_000, "bytes"), (10_000_000, "bytearray")}
    assert all(p.get("mb_per_s", 0) > 0 for p in z["payload"] if p["kind"] in ("bytes", "bytearray"))
    assert z["args_1mb"]["tasks_per_s"] > 0
    assert [row["workers"] for row in z["scaling"]] == [1, 2]
    for row in z["scaling"]:
        assert row["submit"]["tasks_per_s"] > 0 and row["raw_batched"]["tasks_per_s"] > 0

    mem = z["memory"]
    for stage in ("rss_idle", "rss_queued", "rss_drained"):
        assert mem[stage]["ventilator"] > 0 and mem[stage]["sink"] > 0
    assert math.isfinite(mem["bytes_per_queued_task"]["ventilator"])

    for name in ("pool_submit", "pool_map", "raw_unbatched", "raw_batched"):
        assert b[name]["tasks_per_s"] > 0, name
    assert b["pool_latency"]["p50_us"] > 0 and b["raw_latency"]["p50_us"] > 0
    assert {(d["size"], d["n"]) for d in b["raw_payload"]["rows"]} >= {(100, 50), (10_000_000, 1), (1_000_000, 5)}
    assert all(d["mb_per_s"] > 0 for d in b["raw_payload"]["rows"])
    assert {"submit_thread_vs_pool", "payload_10000000_vs_raw", "args_1mb_vs_raw"} <= set(data["ratios"])
    assert data["peers"]["nosuchpeer"]["skipped"]
    for name in ("dask", "ray", "ipyparallel"):
        assert set(data["peers"][name]) & {"skipped", "submit", "error"}

    assert "Throughput" in cp.stdout and "Round trip" in cp.stdout and "Memory" in cp.stdout
