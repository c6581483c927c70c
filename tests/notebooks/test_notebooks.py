"""The notebooks run top to bottom in CI, with small settings injected after their parameters cell, the
way papermill does; the committed files hold no outputs. A notebook about a trained model (06) is given a copy of
the test run's shared digits run as its WORKDIR instead of training one."""
import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CI_PARAMETERS = {  # small enough for CI on 2 cores, big enough for each notebook's own checks to mean something
    "01_quickstart": {"EPOCHS": 3},
    "02_compression": {"EPOCHS": 4, "FINE_TUNE_EPOCHS": 1, "VARIANTS": ["qat"]},
    "03_distributed_and_online_update": {"EPOCHS": 3},
    "04_bring_your_own_data": {"EPOCHS": 10},
    "06_explain": {"EPOCHS": 3},
}
ON_THE_DIGITS_RUN = ("06_explain",)  # WORKDIR: a copy of tests/conftest.py's digits run


def test_there_are_the_five_notebooks_and_ci_knows_each():
    assert [n.stem for n in NOTEBOOKS] == sorted(CI_PARAMETERS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_hold_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [c.outputs for c in code if c.outputs] == [] and [c.execution_count for c in code] == [None] * len(code)
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell holds the parameters"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch, request):
    if path.stem in ON_THE_DIGITS_RUN:
        request.getfixturevalue("digits").copy(tmp_path / "work")
    notebook = nbformat.read(path, as_version=4)
    parameters = {**CI_PARAMETERS[path.stem], "WORKDIR": str(tmp_path / "work")}
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {json.dumps(v)}" for k, v in parameters.items()))
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    notebook.cells.insert(index + 1, injected)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", allow_errors=True,  # run every cell,
                            resources={"metadata": {"path": str(tmp_path)}})              # then say which failed
    client.execute()
    outputs = [(c.source, o) for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    errors = [(source, f"{o.ename}: {o.evalue}") for source, o in outputs if o.output_type == "error"]
    assert errors == []
    noise = [(source, o.text) for source, o in outputs if o.output_type == "stream"
             and any(mark in o.text for mark in ("Traceback", "--- Logging error ---", "failed call to cuInit",
                                                 "oneDNN custom operations"))]
    assert noise == []
    images = [o for _, o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    assert images, "every notebook shows at least one plot inline"
