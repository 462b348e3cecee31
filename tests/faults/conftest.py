from __future__ import annotations

import sys
from pathlib import Path

# The fault searches drive node processes with the integration tests' helper.
# tests/ holds no packages, so make tests/integration/_nodes.py importable as
# ``_nodes`` here too, as it is beside the integration tests.
_INTEGRATION = str(Path(__file__).resolve().parent.parent / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)
