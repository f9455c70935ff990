"""Unit tests: pure rules and the Ledger application on memory:// or a tmp SQLite file; no Kafka, no DuckDB.

The builders live in `builders.py` next to this file (`from builders import ...`).
"""

from __future__ import annotations

import sys
from pathlib import Path

# pytest's default import mode puts this folder on sys.path already; keep `import builders`
# working if the folder ever becomes a package.
_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
