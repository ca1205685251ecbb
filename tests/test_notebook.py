"""The quickstart notebook runs from top to bottom (in a scratch folder) with the package as installed."""

from __future__ import annotations

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = os.path.join(os.path.dirname(__file__), os.pardir, "notebooks", "quickstart.ipynb")


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = "".join(
        out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    # the reward function's own check, the accuracy table and the solved problems all printed
    assert "[1.0, 0.0]" in outputs
    assert "val/accuracy" in outputs
    assert outputs.count("gold ") == 4  # four held-out problems the trained policy solves
    assert "greedy accuracy on the 32 held-out problems: " in outputs
    assert any(out.get("output_type") == "display_data" for cell in notebook.cells for out in cell.get("outputs", []))
    # no noise a notebook user cannot act on (ipywidgets is installed with the extras for progress bars)
    for noise in ("IProgress not found", "LeafSpec", "Tip:", "is deprecated"):
        assert noise not in outputs, noise
