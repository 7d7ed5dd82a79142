import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("KD_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"
# The reference facts every clone is checked against (tests/fixtures/README.md says how they were made).
FIXTURES = ROOT / "tests" / "fixtures"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-data or multi-process checks (run by .ci/run separately)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (DATA / "cifar-100-python" / "train").exists():
        pytest.skip(f"real CIFAR-100 not found under {DATA}")
    return DATA
