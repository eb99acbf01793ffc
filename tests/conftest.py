import sys
from pathlib import Path

# Tests import the helpers in tests/harness.py as `harness`.
sys.path.insert(0, str(Path(__file__).parent))

# The `reactor` fixture (a fresh Twisted reactor per test) lives in tests/reactor_helpers.py.
pytest_plugins = ["reactor_helpers"]
