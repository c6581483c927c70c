"""`make test` spreads tests over two workers with --dist loadgroup, relying on pytest-xdist to keep each
xdist_group on one worker: its module-scoped fixtures (a pipeline run, a server) then run once. A pytest that
xdist cannot mark (9.x renamed what it sets) scatters every group, silently, and the suite takes minutes more."""
import subprocess
import sys

GROUPED = '''
import os, pytest
pytestmark = pytest.mark.xdist_group("together")
@pytest.mark.parametrize("i", range(6))
def test_in_the_group(i):
    print(f"worker {os.environ['PYTEST_XDIST_WORKER']}")
'''


def test_an_xdist_group_runs_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_free.py").write_text("def test_free():\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-s",
                             "-p", "no:cacheprovider", str(tmp_path)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:]
    workers = {line.split()[0] for line in result.stdout.splitlines() if "test_in_the_group" in line and "PASSED" in line}
    assert len(workers) == 1, result.stdout[-2000:]
