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
    "05_monitoring": {"UPDATE_EPOCHS": 5, "TRAINED": "SHARED_DIGITS_RUN"},
    "06_explain": {"EPOCHS": 3, "WORKDIR": "SHARED_DIGITS_RUN"},
}
SHARED_DIGITS_RUN = "SHARED_DIGITS_RUN"  # a parameter's value: a copy of the digits run the tests share (conftest)


def test_ci_knows_each_notebook():
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
    notebook = nbformat.read(path, as_version=4)
    parameters = {"WORKDIR": str(tmp_path / "work"), **CI_PARAMETERS[path.stem]}
    for name, value in parameters.items():
        if value == SHARED_DIGITS_RUN:  # instead of training one: what the notebook trains is tested elsewhere
            parameters[name] = str(request.getfixturevalue("digits").copy(tmp_path / "trained").workdir)
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
