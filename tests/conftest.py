import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("KD_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-data or multi-process checks (run by .ci/run separately)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (DATA / "cifar-100-python" / "train").exists():
        pytest.skip(f"real CIFAR-100 not found under {DATA}")
    return DATA
