"""pmnc: a runtime for integration middleware, a modern Pythomnic3k."""

from pmnc import venv as _venv

__version__ = "0.1.0"

if _venv.main_is_a_cage_module():  # python3 cages/<cage>/<module>.py: its self-test, under .venv
    _venv.use_project_venv()
