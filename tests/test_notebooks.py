"""The notebooks: each runs top to bottom in a fresh Jupyter kernel (nbclient) against the current
package, and each is committed executed, its outputs and plots in the file (`make notebooks`
re-executes them in place). A notebook runs quietly: nothing on stderr (no warning, no progress bar
meant for a terminal or needing ipywidgets: the notebooks train with progress=False)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests._util import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
_NOISE = ("IProgress", "TqdmWarning", "Warning:", "WARNING")


def noise(notebook) -> list[str]:
    """What a notebook's outputs hold that a reader should not see: stderr streams, and warnings
    (tqdm's IProgress notice among them) in any text output."""
    found = []
    for number, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            text = (
                output.get("text", "")
                if output.output_type == "stream"
                else str(output.get("data", {}).get("text/plain", ""))
            )
            if (output.output_type == "stream" and output.name == "stderr") or any(n in text for n in _NOISE):
                found.append(f"cell {number}: {text.strip()[:300]!r}")
    return found


def test_noise_finds_stderr_and_the_iprogress_warning():
    cell = nbformat.v4.new_code_cell("from tqdm.auto import tqdm")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="fine\n")]
    quiet = nbformat.v4.new_notebook(cells=[cell])
    assert noise(quiet) == []
    cell.outputs.append(
        nbformat.v4.new_output(
            "stream", name="stdout", text="TqdmWarning: IProgress not found. Please update jupyter and ipywidgets.\n"
        )
    )
    assert len(noise(quiet)) == 1
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="0%|          | 0/20\n")]
    assert len(noise(quiet)) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_executed_with_its_plots(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code"
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), (
        f"{path.name}: run it top to bottom (make notebooks) before committing"
    )
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not noise(notebook), f"{path.name} was committed with warnings or stderr output: {noise(notebook)}"
    images = [o for cell in code for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == sum(cell.source.count("plt.show()") for cell in code)
    assert path.stat().st_size < 150_000, f"{path.name} is {path.stat().st_size:,} bytes: keep the figures small"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    """A failing cell raises nbclient's CellExecutionError here, with the cell and its traceback."""
    monkeypatch.setenv("COTTENTION_DATA_DIR", str(tmp_path / "data"))  # nothing from earlier runs
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert not noise(notebook), f"{path.name} printed warnings or to stderr: {noise(notebook)}"
