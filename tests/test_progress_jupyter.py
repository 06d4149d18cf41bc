"""Progress bars in Jupyter, for real: an ipykernel (this venv's python, a kernelspec in
``tmp_path``, never a global one) runs cells, driven by nbclient as a notebook front end
would; each cell starts or uses an embedded ``zq.Client()`` cluster.

With ipywidgets, ``zq.progress(futs)`` and ``client.map(..., progress=True)`` each display
one widget, and the widget state that reached the front end (the comm messages nbclient
collected) ends at 200/200, green.  Without ipywidgets (hidden from the kernel) the bar is
the text one on stderr, ending at 200/200, and tqdm's "IProgress not found" warning is not
printed.  Either way the calls return every result and nothing else reaches stderr."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (after the skips)
from jupyter_client.manager import KernelManager  # noqa: E402

pytestmark = pytest.mark.timeout(60)

N = 200
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

SETUP = """\
import zq

def sq(x):
    return x * x

client = zq.Client()  # an embedded local cluster
"""
CELLS = [
    f"""futs = [client.submit(sq, i) for i in range({N})]
done = zq.progress(futs, desc="submit", timeout=30)
print("progress", len(done), sum(f.result() for f in done))""",
    f"""res = list(client.map(sq, range({N}), progress=True, timeout=30))
print("map", len(res), sum(res))""",
    f"""res = list(client.map(sq, range({N}), chunksize=16, progress=True, timeout=30))
print("chunks", len(res), sum(res))""",
]
TOTAL = sum(i * i for i in range(N))
PRINTED = [f"progress {N} {TOTAL}", f"map {N} {TOTAL}", f"chunks {N} {TOTAL}"]


def run_notebook(tmp_path: Path, cells: list[str]) -> Any:
    """Execute ``cells`` in a fresh kernel of this python; the executed notebook (its
    ``metadata.widgets`` holds the widget state the front end received).  Skips when the
    kernel cannot start; a failing cell raises ``CellExecutionError`` with its traceback."""
    kernels = tmp_path / "kernels" / "zq-test"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "zq test (this venv)", "language": "python"}))
    km = KernelManager(kernel_name="zq-test",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    # iopub_timeout: after a cell's reply nbclient waits only this long for the rest of its
    # output (4 s by default, then it drops it with a log line): on a busy machine outputs,
    # and the last widget updates, came later; wait for them, and fail loudly if they never do
    client = nbclient.NotebookClient(nb, km=km, timeout=45, startup_timeout=30, iopub_timeout=30,
                                     raise_on_iopub_timeout=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}  # no user profile
    try:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(client.setup_kernel(env=env, cleanup_kc=True))
            except Exception as e:  # noqa: BLE001  any reason the kernel did not come up
                pytest.skip(f"cannot start a Jupyter kernel of {sys.executable}: {e!r}")
            for i, cell in enumerate(nb.cells):
                client.execute_cell(cell, i)
            client.set_widgets_metadata()
    finally:
        if km.has_kernel:  # a failed start or cell: the kernel (and its embedded cluster) goes
            km.shutdown_kernel(now=True)
    return nb


def streams(cell: Any, name: str) -> str:
    return "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == name)


def test_progress_draws_a_widget_that_ends_at_total(tmp_path: Path) -> None:
    pytest.importorskip("ipywidgets")
    nb = run_notebook(tmp_path, [SETUP, *CELLS, "client.shutdown()"])
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]

    def model(ref: str) -> dict[str, Any]:
        return state[ref.removeprefix("IPY_MODEL_")]

    for cell, printed, desc in zip(nb.cells[1:4], PRINTED, ("submit", "sq", "sq")):
        assert streams(cell, "stdout") == printed + "\n", cell.outputs
        assert not any(o["output_type"] == "error" for o in cell.outputs), cell.outputs
        err = streams(cell, "stderr")  # no traceback, no warning, no text bar beside the widget
        for noise in ("Traceback", "Warning", "%|"):
            assert noise not in err, err
        views = [o["data"][WIDGET_VIEW] for o in cell.outputs if WIDGET_VIEW in o.get("data", {})]
        assert len(views) == 1, cell.outputs
        box = state[views[0]["model_id"]]
        assert box["model_name"] == "HBoxModel"
        left, bar, right = (model(ref) for ref in box["state"]["children"])
        assert desc in left["state"]["value"] and bar["model_name"] == "FloatProgressModel"
        assert (bar["state"]["value"], bar["state"]["max"], bar["state"]["bar_style"]) == (N, N, "success")
        assert f"{N}/{N}" in right["state"]["value"] and "task/s" in right["state"]["value"], right


def test_without_ipywidgets_the_bar_is_text_and_quiet(tmp_path: Path) -> None:
    hide = "import sys\nsys.modules['ipywidgets'] = None  # as if not installed\n"
    nb = run_notebook(tmp_path, [hide + SETUP, *CELLS, "client.shutdown()"])
    assert "Warning" not in streams(nb.cells[0], "stderr"), nb.cells[0].outputs
    for cell, printed in zip(nb.cells[1:4], PRINTED):
        assert streams(cell, "stdout") == printed + "\n", cell.outputs
        assert not any(WIDGET_VIEW in o.get("data", {}) for o in cell.outputs), cell.outputs
        assert not any(o["output_type"] == "error" for o in cell.outputs), cell.outputs
        err = streams(cell, "stderr")
        assert f"{N}/{N}" in err, err
        for noise in ("IProgress", "TqdmWarning", "Traceback", "Warning"):
            assert noise not in err, err
    assert "widgets" not in nb.metadata
