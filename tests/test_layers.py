"""The layering of DESIGN.md, checked on the source: who may import whom."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "cct": {"ray", "mlflow", "optuna", "search_spaces", "orchestrator", "analysis"},
    "search_spaces": {"ray", "mlflow", "orchestrator", "analysis"},
    "analysis": {"ray", "orchestrator", "search_spaces"},
    "orchestrator": set(),
}


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level?) for every import in a file."""
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(n.split(".")[0], id(node) in top_level) for n in names]
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downwards(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module, _ in imports_of(path):
            if module in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_torchvision_is_never_imported_at_module_level(package):
    # The registry's torchvision fails at import next to the CPU torch build.
    bad = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / package).rglob("*.py"))
        for module, top in imports_of(path)
        if module == "torchvision" and top
    ]
    assert not bad, bad
