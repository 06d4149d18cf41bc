"""``pip install zq`` adds one import name, ``zq`` (issue 11): the node code and the
benchmarks install as ``zq.nodes`` and ``zq.bench``, never as top-level ``nodes``/``bench``
that would clash with other distributions."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys


def test_the_distribution_provides_only_the_zq_import_name():
    names = {top for top, dists in importlib.metadata.packages_distributions().items() if "zq" in dists}
    assert names == {"zq"}, names


def test_nodes_and_bench_import_under_zq_only(tmp_path):
    code = ("import importlib.util as u, zq.nodes.cli, zq.bench.cli, zq.nodes.web.app;"
            "print(u.find_spec('nodes'), u.find_spec('bench'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["None", "None"], r.stdout


def test_entry_points_follow():
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "zq"]
    assert script.value == "zq.nodes.cli:main"
    for module in ("zq.nodes", "zq.bench"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "usage" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


def test_a_node_raises_its_open_file_limit_to_the_hard_limit(tmp_path):
    """A ventilator holds a socket per worker and client: the soft limit (often 1,024) is a
    default, raised at start to what the system allows (issue 11: limits that are only defaults)."""
    code = ("import resource; s, h = resource.getrlimit(resource.RLIMIT_NOFILE);"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, h));"
            "from zq.nodes.common import raise_fd_limit; n = raise_fd_limit();"
            "print(n, resource.getrlimit(resource.RLIMIT_NOFILE)[0], h)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    now, soft, hard = r.stdout.split()
    assert int(soft) == int(now) > 256 and (int(soft) == int(hard) or int(hard) == -1), r.stdout
