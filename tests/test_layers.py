"""Layers only look down (docs/design.md): checked by parsing every ``import`` with ``ast``.

Every import counts, including those inside functions and ``if TYPE_CHECKING:`` blocks: a lazy
import is still a dependency, and a lazy import is how a cycle hides.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "medfail"


def _module_name(path: Path, src: Path) -> str:
    if not path.is_relative_to(src):
        return path.stem  # tests/, benchmarks/: no package, no relative imports
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, src: Path = SRC) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` for every import of ``path``; relative imports resolved.

    ``from a.b import c`` gives ``("a.b", "c")``; ``import a.b`` gives ``("a.b", None)``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path, src).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.extend((node.lineno, module, alias.name) for alias in node.names)
    return out


def _medfail_targets(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """``(line, medfail module)`` imported by ``path``: ``from medfail import engine`` counts
    as ``medfail.engine``, ``from medfail.engine.x import f`` as ``medfail.engine.x``."""
    targets: list[tuple[int, str]] = []
    for line, module, name in _imports(path, src):
        if module == "medfail" and name is not None:
            targets.append((line, f"medfail.{name}"))
        elif module == "medfail" or module.startswith("medfail."):
            targets.append((line, module))
    return targets


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _files(subpackage: str) -> list[Path]:
    return sorted((PKG / subpackage).rglob("*.py"))


# Known exceptions, each with its reason: (importing file relative to src/medfail, imported
# module). They belong to the run-directory work of issue 12 item 2 (paths and readers of the run
# directory still live in medfail.engine); remove a row when its import goes.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}

# (sub-package, forbidden prefix, why)
FORBIDDEN: list[tuple[str, str, str]] = [
    ("data", "medfail.engine", "data/ is below the engine"),
    ("stress", "medfail.engine", "stress/ is below the engine"),
    ("metrics", "medfail.engine", "metrics/ is below the engine"),
    ("analysis", "medfail.engine", "analysis/ works from storage, below the engine"),
    ("report", "medfail.models", "report/ formats stored tables; it never needs a model"),
]


def _violations(subpackage: str, forbidden: str) -> list[str]:
    found = []
    for path in _files(subpackage):
        rel = path.relative_to(PKG).as_posix()
        for line, target in _medfail_targets(path):
            if _within(target, forbidden) and (rel, target) not in KNOWN_EXCEPTIONS:
                found.append(f"{rel}:{line} imports {target}")
    return found


@pytest.mark.parametrize(("subpackage", "forbidden", "why"), FORBIDDEN)
def test_lower_layers_never_import_upwards(subpackage: str, forbidden: str, why: str) -> None:
    assert _files(subpackage), subpackage
    assert _violations(subpackage, forbidden) == [], why


def test_metrics_import_only_errors_types_and_themselves() -> None:
    allowed = ("medfail.metrics", "medfail.errors", "medfail.types")
    bad = [
        f"{path.relative_to(PKG).as_posix()}:{line} imports {target}"
        for path in _files("metrics")
        for line, target in _medfail_targets(path)
        if not any(_within(target, a) for a in allowed)
    ]
    assert bad == []


def test_seeding_is_ground_floor() -> None:
    """``medfail.seeding`` imports nothing of medfail, and no engine copy of it is left."""
    assert _medfail_targets(PKG / "seeding.py") == []
    assert _medfail_targets(PKG / "conditions.py") == []  # shared by engine and analysis
    assert not (PKG / "engine" / "seeding.py").exists()
    stale = [
        f"{path.relative_to(SRC.parent).as_posix()}:{line}"
        for root in ("src", "tests", "benchmarks")
        for path in sorted((SRC.parent / root).rglob("*.py"))
        for line, target in _medfail_targets(path)
        if target == "medfail.engine.seeding"
    ]
    assert stale == []


def test_the_checker_sees_lazy_relative_and_package_imports(tmp_path: Path) -> None:
    """The parser itself: imports in functions, under TYPE_CHECKING, relative and package-level
    ``from medfail import engine`` are all seen (so the rules above cannot pass vacuously)."""
    pkg = tmp_path / "src" / "medfail" / "data"
    pkg.mkdir(parents=True)
    mod = pkg / "x.py"
    mod.write_text(
        "from typing import TYPE_CHECKING\n"
        "from medfail import engine\n"
        "if TYPE_CHECKING:\n    from ..engine.runner import run_suite\n"
        "def f():\n    import medfail.engine.seeding\n"
    )
    targets = [t for _, t in _medfail_targets(mod, tmp_path / "src")]
    assert targets == ["medfail.engine", "medfail.engine.runner", "medfail.engine.seeding"]


def test_known_exceptions_are_real_files() -> None:
    for rel, _target in KNOWN_EXCEPTIONS:
        assert (PKG / rel).is_file(), rel


def test_importing_seeding_loads_no_other_medfail_module() -> None:
    code = (
        "import sys, medfail.seeding\n"
        "print(sorted(m for m in sys.modules if m.startswith('medfail')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "['medfail', 'medfail.seeding']"


# --------------------------------------------------------------------- medfail.stress: no cycles


def _stress_graph() -> dict[str, set[str]]:
    """medfail.stress module → the medfail.stress modules it imports (any import, anywhere)."""
    graph: dict[str, set[str]] = {}
    for path in _files("stress"):
        deps = set()
        for _line, target in _medfail_targets(path):
            if _within(target, "medfail.stress") and target != "medfail.stress":
                deps.add(target)
        graph[_module_name(path, SRC)] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (one per back edge)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                found.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_stress_import_graph_has_no_cycle() -> None:
    graph = _stress_graph()
    assert "medfail.stress.registry" in graph and "medfail.stress.spec" in graph
    assert _cycles(graph) == []
    # the catalogue is on top: no kernel module imports it
    assert [m for m, deps in graph.items() if "medfail.stress.registry" in deps] == []


def test_cycle_finder_finds_the_old_lazy_cycle() -> None:
    """The shape before issue 12: registry lazily imported the kernels, which imported it."""
    old = {"medfail.stress.registry": {"medfail.stress.corruptions"},
           "medfail.stress.corruptions": {"medfail.stress.registry"},
           "medfail.stress.domain_shift": {"medfail.stress.corruptions"}}
    assert _cycles(old) == [["medfail.stress.corruptions", "medfail.stress.registry",
                             "medfail.stress.corruptions"]]


def test_stress_modules_import_no_private_names() -> None:
    """No ``from medfail.x import _name`` in stress/ (and none from stress/ anywhere in src)."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        in_stress = path.parent == PKG / "stress"
        for line, module, name in _imports(path):
            if not (module == "medfail" or module.startswith("medfail.")):
                continue
            if name and name.startswith("_") and (in_stress or _within(module, "medfail.stress")):
                bad.append(f"{path.relative_to(PKG).as_posix()}:{line} {module}.{name}")
    assert bad == []


def test_importing_medfail_stress_reenters_no_module() -> None:
    """``import medfail.stress`` and its catalogue never import a module that is still running
    its own top-level code (the runtime sign of a cycle), and never load the engine."""
    code = r"""
import builtins, sys
seen = []
real = builtins.__import__
def hook(name, globals=None, locals=None, fromlist=(), level=0):
    mod = real(name, globals, locals, fromlist, level)
    names = [mod.__name__] + [f"{mod.__name__}.{f}" for f in fromlist or () if f != "*"]
    for n in names:
        m = sys.modules.get(n)
        spec = getattr(m, "__spec__", None)
        if n.startswith("medfail") and getattr(spec, "_initializing", False):
            seen.append(n)
    return mod
builtins.__import__ = hook
import medfail.stress
import medfail.stress.registry as r
r.names(); r.list_rows()
import medfail.stress.corruptions, medfail.stress.domain_shift
import medfail.stress.prompt_perturbations, medfail.stress.spec
print(seen)
print(sorted(m for m in sys.modules if m.startswith("medfail.engine")))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.split("\n")
    assert out[:2] == ["[]", "[]"]
