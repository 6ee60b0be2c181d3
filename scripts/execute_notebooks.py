"""Execute the notebooks in place, so that their outputs and plots are the current code's (`make notebooks`).

    python scripts/execute_notebooks.py                      # every notebook in notebooks/
    python scripts/execute_notebooks.py notebooks/03_*.ipynb

Each runs top to bottom in a fresh kernel of this interpreter (nbclient), from notebooks/; a cell
that fails stops it with the error and leaves the file as it was. The per-cell timing metadata is
dropped so that re-running changes only what the outputs change.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(path: Path, timeout: int = 900) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    return notebook


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(NOTEBOOKS.glob("*.ipynb")):
        path = Path(name)
        nbformat.write(execute(path), path)
        print(f"executed {path} ({path.stat().st_size / 1024:.0f} KiB)")
