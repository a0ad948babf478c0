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
# Inside analysis/: the run contract, the Pareto front, the importances and the progress bars
# at the bottom, then shp, committee (reads SHP label sets) and report (reads everything) on top.
ANALYSIS = {
    "analysis/pareto.py": {
        "analysis.runs",
        "analysis.shp",
        "analysis.committee",
        "analysis.report",
    },
    "analysis/importance.py": {
        "analysis.runs",
        "analysis.shp",
        "analysis.committee",
        "analysis.report",
    },
    "analysis/progress.py": {
        "analysis.runs",
        "analysis.shp",
        "analysis.committee",
        "analysis.report",
    },
    "analysis/runs.py": {"analysis.shp", "analysis.committee", "analysis.report"},
    "analysis/shp": {"analysis.committee", "analysis.report"},
    "analysis/committee": {"analysis.report"},
    "analysis/report": set(),
}


def imports_of(path: Path, full: bool = False) -> list[tuple[str, bool]]:
    """(top-level module, or the full dotted name with `full`; imported at module level?) for
    every import in a file."""
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
        out += [(n if full else n.split(".")[0], id(node) in top_level) for n in names]
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downwards(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module, _ in imports_of(path):
            if module in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, bad


@pytest.mark.parametrize("part", sorted(ANALYSIS))
def test_analysis_packages_import_only_downwards(part):
    where = ROOT / part
    files = [where] if where.suffix == ".py" else sorted(where.rglob("*.py"))
    assert files and all(f.is_file() for f in files), part
    bad = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in files
        for module, _ in imports_of(path, full=True)
        if any(module == f or module.startswith(f + ".") for f in ANALYSIS[part])
    ]
    assert not bad, bad


def test_every_analysis_module_has_a_layer():
    covered = {ROOT / p for p in ANALYSIS}
    stray = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "analysis").rglob("*.py"))
        if path.name != "__init__.py"
        and path != ROOT / "analysis/bench.py"  # the `python -m analysis.bench` entry point
        and not any(path == c or c in path.parents for c in covered)
    ]
    assert not stray, stray


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
