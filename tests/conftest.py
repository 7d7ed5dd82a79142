import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The real CIFAR-100 and the reference's specs are not part of the repository: they are read from a
# data folder beside the checkout (named by KD_SHARED; by default ``shared`` next to the repository
# root), as ``data/cifar-100-python/`` and ``reference/*.json|md``. Tests that need them skip with a
# reason when they are absent.
SHARED = Path(os.environ.get("KD_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"
# The reference facts every clone is checked against (tests/fixtures/README.md says how they were made).
FIXTURES = ROOT / "tests" / "fixtures"


def load_script(name: str):
    """``scripts/<name>.py`` as the module ``name`` (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-data or multi-process checks (run by .ci/run separately)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (DATA / "cifar-100-python" / "train").exists():
        pytest.skip(f"real CIFAR-100 not found under {DATA}")
    return DATA
