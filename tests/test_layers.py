"""The layout stays true: packages import downwards only, and no two files import each other.

Every import counts, including those inside functions and under `if TYPE_CHECKING:` (a lazy import
is still a dependency). The layers, bottom first, as each package's `__init__.py` states them:

    0  shared ground   cordlite/{audio,files,lock,tracking,schema,prompts,config,recipe,data,cli_common}.py
    1  models/         data_tools/ (TTS and datasets: shared ground only)
    2  judge/
    3  objective/
    4  train/  eval/  deploy/          (peers: none imports another)
    5  testbed/
    6  cordlite/cli.py (and __main__.py, which runs it)
    7  benchmarks/
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("cordlite", "data_tools", "benchmarks")

# A module's layer is decided by the longest prefix listed here. data_tools' own sub-packages
# are ordered inside its layer (1.0 .. 1.5), so they too import downwards only.
LAYERS: dict[str, float] = {
    "cordlite": 0,  # the package itself and the shared-ground modules at its top level
    "cordlite.models": 1,
    "data_tools": 1.0,
    "data_tools.text": 1.0,
    "data_tools.sources": 1.0,
    "data_tools.tts": 1.1,
    "data_tools.job": 1.2,
    "data_tools.tiny_spoken": 1.2,
    "data_tools.check": 1.3,
    "data_tools.presets": 1.4,
    "data_tools.cli": 1.5,
    "cordlite.judge": 2,
    "cordlite.objective": 3,
    "cordlite.train": 4,
    "cordlite.eval": 4,
    "cordlite.deploy": 4,
    "cordlite.testbed": 5,
    "cordlite.cli": 6,
    "cordlite.__main__": 6.5,  # runs the cli
    "benchmarks": 7,
}
SHARED_GROUND = {"cordlite", "cordlite.audio", "cordlite.files", "cordlite.lock", "cordlite.tracking", "cordlite.schema", "cordlite.prompts",
                 "cordlite.config", "cordlite.recipe", "cordlite.data", "cordlite.cli_common"}
# The pure CORD maths: tensors in, tensors out; nothing but torch and the standard library.
PURE = {"cordlite.objective.weights", "cordlite.objective.advantages", "cordlite.objective.losses"}
PURE_ALLOWED = {"__future__", "math", "typing", "dataclasses", "torch"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name an import statement in `path` mentions (absolute and relative, at any depth),
    with `from X import Y` giving both X and X.Y (Y may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: None if is_pkg else -1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return found


def import_graph(root: Path, tops: tuple[str, ...] = TOPS) -> dict[str, set[str]]:
    """module -> the project modules it imports (itself excluded)."""
    files = {module_name(f, root): f for top in tops if (root / top).is_dir() for f in (root / top).rglob("*.py")}
    graph = {}
    for mod, f in files.items():
        targets = {t for t in imported_names(f, mod) if t in files and t != mod}
        # `from pkg import module` names the package too; the module is the dependency that matters
        graph[mod] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
    return graph


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise KeyError(module)
    return LAYERS[best]


def package_of(module: str) -> str:
    """The unit that may import itself freely: a sub-package (cordlite.models), or a top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    strays = {m for m in graph if m.count(".") == 1 and m.startswith("cordlite.") and layer_of(m) == 0
              and m not in SHARED_GROUND}
    bad += [f"{m}: a top-level cordlite module that is not shared ground; add it to a package" for m in sorted(strays)]
    for mod, targets in sorted(graph.items()):
        if mod in strays:
            continue
        for t in sorted(targets):
            if package_of(t) == package_of(mod) or t == "cordlite" or mod.startswith("benchmarks"):
                continue
            if mod in SHARED_GROUND and t in SHARED_GROUND:
                continue  # shared ground is one layer; the circle test keeps it a tree
            if layer_of(t) >= layer_of(mod):
                bad.append(f"{mod} (layer {layer_of(mod)}) imports {t} (layer {layer_of(t)})")
            if mod.startswith("data_tools") and t.startswith("cordlite") and t not in SHARED_GROUND:
                bad.append(f"{mod} imports {t}: data_tools may use cordlite's shared ground only")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_every_module_has_a_layer(graph):
    for mod in graph:
        layer_of(mod)  # raises KeyError for a module outside the map


def test_packages_import_downwards_only(graph):
    assert layer_violations(graph) == []


def test_no_import_circle_between_files(graph):
    assert cycles(graph) == []


def test_pure_modules_import_only_torch(graph):
    for mod in PURE:
        path = ROOT / (mod.replace(".", "/") + ".py")
        roots = {name.split(".")[0] for name in imported_names(path, mod)}
        assert roots <= PURE_ALLOWED, f"{mod} imports {sorted(roots - PURE_ALLOWED)}"


def test_each_package_says_what_it_may_import():
    for init in sorted((ROOT / "cordlite").rglob("__init__.py")) + sorted((ROOT / "data_tools").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "May import" in doc and "Must not be imported by" in doc, f"{init}: docstring lacks the import rules"


def test_the_checks_catch_a_bad_layout(tmp_path):
    """A planted upward import, a planted circle and a stray top-level module are all reported."""
    files = {
        "cordlite/__init__.py": "",
        "cordlite/files.py": "",
        "cordlite/stray.py": "from cordlite import files\n",
        "cordlite/models/__init__.py": "",
        "cordlite/models/load.py": "def f():\n    from cordlite.objective.step import collect\n",
        "cordlite/objective/__init__.py": "",
        "cordlite/objective/step.py": "from cordlite.models import load\nfrom . import weights\n",
        "cordlite/objective/weights.py": "from cordlite.objective.step import collect\n",
        "data_tools/__init__.py": "",
        "data_tools/tts.py": "from cordlite.objective import weights\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    g = import_graph(tmp_path, ("cordlite", "data_tools"))
    # `from cordlite.models import load` counts as the module; `from . import weights` is relative
    assert g["cordlite.objective.step"] == {"cordlite.models.load", "cordlite.objective.weights"}
    assert layer_violations(g) == [
        "cordlite.stray: a top-level cordlite module that is not shared ground; add it to a package",
        "cordlite.models.load (layer 1) imports cordlite.objective.step (layer 3)",
        "data_tools.tts (layer 1.1) imports cordlite.objective.weights (layer 3)",
        "data_tools.tts imports cordlite.objective.weights: data_tools may use cordlite's shared ground only",
    ]
    # load -> step -> load, and step <-> weights: one component of three files
    assert cycles(g) == [["cordlite.models.load", "cordlite.objective.step", "cordlite.objective.weights"]]
