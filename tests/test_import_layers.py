"""The layering of DESIGN.md, checked on the source: who may import whom, no import loops,
measurement in rooms of its own, the driver's side apart from the workers', and imports at
the top unless a comment says why not."""

import ast
import sys
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
        and ROOT / "analysis/bench" not in path.parents  # the benchmark harness, its own room
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


PRODUCT = ("cct", "search_spaces", "orchestrator", "analysis")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PRODUCT for p in sorted((ROOT / pkg).rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports, anywhere in the file (type-checking and
    function-level imports too: a loop through them is still a loop)."""
    modules = product_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_loops():
    assert loops(import_graph()) == []


def test_the_loop_finder_finds_a_loop():
    assert loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Benchmark harnesses, apart from what they measure: nothing else imports them. The suite's
# shared helpers (timing, report rows, the workload) are cct/perf's own top level, which the
# Ray-side and analysis benchmarks use too.
HARNESSES = ("cct.perf", "orchestrator.bench", "analysis.bench")


def test_nothing_outside_the_measurement_rooms_imports_a_harness():
    bad = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if not name.startswith(HARNESSES)
        for target in targets
        if target.startswith(HARNESSES)
    ]
    assert not bad, bad


# The worker side runs inside Ray's worker processes: it never reaches into the driver's
# modules (what both sides need - tracking, cost, phase marks, the node id - is shared).
DRIVER_ONLY = (
    "orchestrator.sweep",
    "orchestrator.driver",
    "orchestrator.trial",
    "orchestrator.callbacks",
    "orchestrator.console",
    "orchestrator.study",
    "orchestrator.tune_objects",
    "orchestrator.summary",
)


def test_the_worker_side_imports_nothing_of_the_driver():
    bad = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if name.startswith("orchestrator.worker")
        for target in targets
        if target in DRIVER_ONLY
    ]
    assert not bad, bad


def test_the_train_controllers_callback_module_stays_small():
    # Ray Train's controller (a fresh process per trial) imports the module of every
    # callback it is given: tune_report must not pull torch, mlflow or cct.
    imported = {m for m, _ in imports_of(ROOT / "orchestrator/worker/tune_report.py")}
    assert imported <= {"__future__", "ray"}, imported


def test_orchestrator_keeps_at_most_14_modules_at_its_top():
    top = sorted(p.name for p in (ROOT / "orchestrator").glob("*.py"))
    assert len(top) <= 14, top


def deferred_imports(path: Path) -> list[tuple[int, str]]:
    """(line, the comment above it) of each import inside a function or class."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    at_top = set()
    for node in tree.body:  # module level, `if TYPE_CHECKING:` and `try:` blocks included
        at_top |= {id(n) for n in ast.walk(node)} if isinstance(node, (ast.If, ast.Try)) else set()
        at_top.add(id(node))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in at_top:
            above = node.lineno - 2
            # One comment covers a group of imports (matplotlib's backend chosen among them).
            while above >= 0 and (
                not lines[above].strip()
                or lines[above].strip().startswith(("import ", "from ", "matplotlib.use("))
            ):
                above -= 1
            comment = lines[above].strip() if above >= 0 else ""
            out.append((node.lineno, comment))
    return out


@pytest.mark.parametrize("package", PRODUCT)
def test_imports_sit_at_the_top_unless_a_comment_says_why(package):
    bad = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, comment in deferred_imports(path)
        if not comment.startswith("# deferred:")
    ]
    assert not bad, bad
