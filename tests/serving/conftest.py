"""The server tests import their helpers (half_plus_two, repo_files) by module name; the fixtures they
share with other tests (half_plus_two_base, digits) are in tests/conftest.py. The server itself runs
per test module (serving.process.ServerProcess)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # half_plus_two, repo_files
