"""The architecture as DESIGN.md section 2 draws it: the runtime side never imports the build side, torch or
onnx; nothing imports in a circle. Read from the source (every import statement, lazy ones inside
functions too), so a wrong-way import fails here before it fails on a Jetson without torch."""

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

from conftest import ROOT

PACKAGE = ROOT / "edgekit"
# What a deployment image does not have (DESIGN.md section 2).
# (Lazy imports of optional packages such as yaml or matplotlib are fine: their absence is a one-line error.)
RUNTIME_FORBIDDEN = ("edgekit.build", "edgekit.cli", "torch", "torchvision", "onnx", "onnxslim", "torch_pruning",
                     "safetensors")


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = PACKAGE.parent) -> List[Tuple[str, int]]:
    """(imported module, line) of every import statement in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # `from edgekit.runtime import card` imports the module edgekit.runtime.card
            found += [(f"{target}.{a.name}", node.lineno) for a in node.names]
    return found


def modules(root: Path = PACKAGE) -> Dict[str, Path]:
    return {module_name(p, root.parent): p for p in sorted(root.rglob("*.py"))}


def wrong_way_imports(root: Path = PACKAGE) -> List[str]:
    """'module:line imports X' for every runtime-side import of the build side, torch or onnx."""
    problems = []
    for name, path in modules(root).items():
        if not (name == "edgekit.runtime" or name.startswith("edgekit.runtime.")):
            continue
        reported = set()
        for target, line in imports_of(path, root.parent):
            parent = target.rpartition(".")[0]
            if (parent, line) in reported:  # `from edgekit.build.x import y`: the module said it already
                continue
            if any(target == bad or target.startswith(bad + ".") for bad in RUNTIME_FORBIDDEN):
                problems.append(f"{name}:{line} imports {target}")
                reported.add((target, line))
    return problems


def import_cycles(root: Path = PACKAGE) -> List[List[str]]:
    """Strongly connected groups of edgekit modules (Tarjan), each a cycle of imports."""
    mods = modules(root)
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _ in imports_of(path, root.parent):
            # an import of a.b.c also runs a/__init__ and a/b/__init__, but those are not edges we own;
            # the module itself is the edge
            if target in mods and target != name:
                graph[name].add(target)
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_runtime_side_never_imports_the_build_side_torch_or_onnx():
    assert wrong_way_imports() == []


def test_no_import_cycles():
    assert import_cycles() == []


def test_the_check_catches_a_wrong_way_import(tmp_path):
    """The same check on a copy of the package with one runtime module importing the build side."""
    import shutil

    copy = tmp_path / "edgekit"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "runtime" / "preprocess.py"
    before = set(wrong_way_imports(copy))
    target.write_text(target.read_text() + "\n\ndef _late():\n    from edgekit.build import export  # noqa\n")
    line = len(target.read_text().splitlines())
    assert set(wrong_way_imports(copy)) - before == {f"edgekit.runtime.preprocess:{line} imports edgekit.build"}


def test_the_check_catches_a_cycle(tmp_path):
    import shutil

    copy = tmp_path / "edgekit"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    card = copy / "runtime" / "card.py"
    assert ["edgekit.runtime.card", "edgekit.runtime.preprocess"] not in import_cycles(copy)
    card.write_text(card.read_text() + "\nfrom edgekit.runtime import preprocess  # noqa\n")
    assert ["edgekit.runtime.card", "edgekit.runtime.preprocess"] in import_cycles(copy)
