"""The package's shape, checked from its source: layers import one way, no module cycle, runtime's subpackages
one-way, small files and functions, the runtime free of training code, every backend made in
runtime/backends, a README that is a tour.

The scan reads the source with ``ast`` (imports anywhere in a module count, lazy ones too) and is itself
tested on a small tree with one fault of each kind, so that a check that could never fail would show.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Repo folder -> import name (setup.cfg's package_dir), in layer order: each may import those before it.
LAYERS = {"avemo": "avemo", "runtime": "avemo.runtime", "train": "avemo.train", "export": "avemo.export",
          "calibration": "avemo.calibration"}  # fmt: skip
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_LOOSE_RUNTIME_MODULES, MAX_README_LINES = 400, 80, 8, 300
BACKEND_CLASSES = ("OrtBackend(", "TrtBackend(", "ReferenceBackend(")


def modules(root: Path) -> dict[str, Path]:
    """Import name -> file of every module of the package under ``root``."""
    found = {}
    for folder, name in LAYERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            found[".".join([name, *(parts[:-1] if parts[-1] == "__init__" else parts)])] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (at the top or inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            wanted = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            wanted = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in wanted:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def subpackage(module: str) -> str:
    """``avemo.runtime.backends.trt`` -> ``avemo.runtime.backends``; other modules stand for themselves."""
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["avemo", "runtime"] and len(parts) > 3 else module


def layer(module: str) -> int:
    names = list(LAYERS.values())
    return max(i for i, prefix in enumerate(names) if module == prefix or module.startswith(prefix + "."))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def scan(root: Path) -> list[str]:
    """Every rule broken under ``root``, one line each."""
    known = modules(root)
    graph = defaultdict(set, {name: imports(name, path, known) for name, path in known.items()})
    problems = [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    packages: dict[str, set[str]] = defaultdict(set)  # runtime's subpackages, each seen as one node
    for name, targets in graph.items():
        packages[subpackage(name)] |= {subpackage(t) for t in targets} - {subpackage(name)}
    problems += [f"package cycle: {' <-> '.join(c)}" for c in cycles(packages)]
    for name, targets in graph.items():
        for target in sorted(targets):
            # The core's command table names the subpackages' commands (imported on use): its one upward edge.
            upward = layer(target) > layer(name) and not (name == "avemo.cli" and target not in known)
            if upward and layer(name) > 0:
                problems.append(f"layering: {name} imports {target}")
    for name, path in known.items():
        text = path.read_text()
        rel = path.relative_to(root)
        if name.startswith("avemo.runtime") and (hit := re.search(r"avemo\.(export|train|calibration)\b", text)):
            problems.append(f"{rel}: the runtime names {hit.group(0)}")
        if not str(rel).startswith("runtime/backends/") and not str(rel).startswith("export/torch_runner"):
            problems += [f"{rel}: makes a {c[:-1]} outside runtime/backends" for c in BACKEND_CLASSES if c in text]
    for path in [*known.values(), *sorted((root / "scripts").rglob("*.py")), *sorted((root / "tests").rglob("*.py"))]:
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            problems.append(f"{path.relative_to(root)}: {lines} lines")
    for path in known.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    problems.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {length} lines")
    loose = sorted(p.name for p in (root / "runtime").glob("*.py") if p.name != "__init__.py")
    if len(loose) > MAX_LOOSE_RUNTIME_MODULES:
        problems.append(f"runtime/ has {len(loose)} loose modules: {', '.join(loose)}")
    readme = len((root / "README.md").read_text().splitlines())
    if readme > MAX_README_LINES:
        problems.append(f"README.md: {readme} lines")
    return problems


def test_the_package_keeps_its_shape():
    assert scan(ROOT) == []


def test_the_scan_finds_each_kind_of_fault(tmp_path):
    """A tree with one fault of each kind: every one is reported (the checks above can fail)."""
    files = {
        "avemo/__init__.py": "",
        "runtime/__init__.py": "",
        "runtime/a.py": "from avemo.runtime import b\n",
        "runtime/p/__init__.py": "",
        "runtime/p/x.py": "from avemo.runtime.q import y\n",
        "runtime/q/__init__.py": "",
        "runtime/q/y.py": "x = 1\n",
        "runtime/q/z.py": "from avemo.runtime.p import x\n",
        "runtime/b.py": "import avemo.runtime.a\nx = 'avemo.train.trainer'\n",
        "runtime/c.py": "from avemo.train import model\n",
        "runtime/d.py": "OrtBackend(path)\n",
        "train/__init__.py": "",
        "train/model.py": "def long():\n" + "    x = 1\n" * 80,
        "export/__init__.py": "",
        "export/big.py": "x = 1\n" * 401,
        "calibration/__init__.py": "",
        "README.md": "line\n" * 301,
    }
    files |= {f"runtime/loose{i}.py": "" for i in range(5)}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "tests").mkdir()
    found = "\n".join(scan(tmp_path))
    for expected in (
        "import cycle: avemo.runtime.a <-> avemo.runtime.b",
        "package cycle: avemo.runtime.p <-> avemo.runtime.q",
        "layering: avemo.runtime.c imports avemo.train.model",
        "runtime/b.py: the runtime names avemo.train",
        "runtime/d.py: makes a OrtBackend outside runtime/backends",
        "export/big.py: 401 lines",
        "train/model.py:1 long: 81 lines",
        "runtime/ has 9 loose modules",
        "README.md: 301 lines",
    ):
        assert expected in found, (expected, found)
