"""Dependencies point one way (docs/contract.md §1, STYLE §1): ledger → nothing of ours, no Kafka, DuckDB or structlog."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEDGER = ROOT / "ledger"
FORBIDDEN_IN_LEDGER = {"kafka", "duckdb", "structlog", "consumers", "projections", "arledger"}
# The domain modules may use the standard library, msgspec and eventsourcing's domain classes;
# only the application service (and the aggregates it persists) touch eventsourcing's storage.
ALLOWED_IN_LEDGER = set(sys.stdlib_module_names) | {"msgspec", "eventsourcing", "ledger"}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a source file imports, anywhere in it (also inside functions)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            modules.add(node.args[0].value)
    return modules


LEDGER_FILES = sorted(LEDGER.glob("**/*.py"))


def test_the_ledger_package_has_source_to_scan() -> None:
    assert {"account.py", "contract.py", "events.py", "application.py"} <= {path.name for path in LEDGER_FILES}


@pytest.mark.parametrize("path", LEDGER_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_ledger_imports_none_of_kafka_duckdb_structlog_or_our_other_packages(path: Path) -> None:
    roots = {module.split(".")[0] for module in imported_modules(path)}

    assert not roots & FORBIDDEN_IN_LEDGER, f"{path.name} imports {sorted(roots & FORBIDDEN_IN_LEDGER)}"


@pytest.mark.parametrize("path", LEDGER_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_ledger_imports_only_the_standard_library_msgspec_and_eventsourcing(path: Path) -> None:
    roots = {module.split(".")[0] for module in imported_modules(path)}

    assert roots <= ALLOWED_IN_LEDGER, f"{path.name} imports {sorted(roots - ALLOWED_IN_LEDGER)}"


def test_the_scan_sees_nested_and_dynamic_imports(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text("def f():\n    import duckdb\n    from kafka import KafkaProducer\n"
                      "    importlib.import_module('structlog')\nfrom . import sibling\n")

    assert imported_modules(source) == {"duckdb", "kafka", "structlog"}


def test_import_contracts_are_kept() -> None:
    """The import-linter contracts of pyproject.toml, as `make test` runs them."""
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint_imports, "lint-imports not installed: pip install -e '.[test]'"

    result = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
