"""Import structure of the package: no circles below the trainers, and the layering rules.

The graph comes from the source (``ast``), not from importing it, so it sees function-level
(lazy) imports too. :func:`import_graph` covers the whole package; the tests pick the part they
check. A second set of tests imports modules in a fresh interpreter and looks at
``sys.modules``: what a module really pulls in.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "rlstruct"

#: the math and I/O core: no import circles among these.
CORE = ("rlstruct.layers", "rlstruct.kernels", "rlstruct.optim", "rlstruct.io", "rlstruct.errors",
        "rlstruct.policies")
#: the trainers and the CLI layer, which nothing in the core may reach.
TRAINERS = ("rlstruct.policies", "rlstruct.runner", "rlstruct.algos")
RL_LIBRARIES = ("stable_baselines3", "sb3_contrib", "gymnasium", "hydra")


class Import(NamedTuple):
    target: str  # the module imported (a package module for a `from pkg import name`)
    lazy: bool  # inside a function (or class body): runs only when called
    line: int


def module_names(root: Path, package: str) -> Dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of ``package`` under ``root``."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_in(tree: ast.AST, module: str, is_package: bool, modules: Set[str]) -> List[Import]:
    """Every import statement of one module, resolved to absolute module names."""
    found: List[Import] = []
    here = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            return  # never runs
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, lazy, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(sub if sub in modules else base, lazy, node.lineno))
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                          ast.ClassDef))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Dict[str, List[Import]]:
    """``{module: imports}`` for every module of ``package``; targets are absolute names, inside
    the package or not (``torch``, ``stable_baselines3.common.policies``, ...)."""
    files = module_names(root, package)
    modules = set(files)
    return {
        name: _imports_in(ast.parse(path.read_text(), str(path)), name,
                          path.name == "__init__.py", modules)
        for name, path in files.items()
    }


def under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def cycles(graph: Dict[str, List[Import]], nodes: Set[str]) -> List[List[str]]:
    """Strongly connected components of more than one module (or a module importing itself)
    among ``nodes``, counting lazy imports too (Tarjan)."""
    edges = {n: sorted({i.target for i in graph[n] if i.target in nodes}) for n in nodes}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            connect(v)
    return found


def eager_closure(graph: Dict[str, List[Import]], start: str) -> Set[str]:
    """Everything ``import start`` runs, as far as the source says: module-level imports,
    followed through the package, plus every parent package (its ``__init__`` runs first)."""
    seen: Set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in graph:
            continue  # outside the package: a leaf
        parents = [name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)]
        todo.extend(parents)
        todo.extend(i.target for i in graph[name] if not i.lazy)
    return seen


GRAPH = import_graph()


def test_graph_sees_the_package():
    assert {"rlstruct", "rlstruct.layers.givens", "rlstruct.kernels.dispatch",
            "rlstruct.optim.projunn", "rlstruct.policies"} <= set(GRAPH)
    # `from rlstruct.kernels import givens_cpu` is an edge to the submodule, not the package.
    assert "rlstruct.kernels.givens_cpu" in {i.target for i in GRAPH["rlstruct.kernels.dispatch"]}


def test_cycle_finder_finds_a_lazy_circle():
    fake = {"a": [Import("b", False, 1)], "b": [Import("a", True, 1)], "c": [Import("c", True, 1)]}
    assert cycles(fake, {"a", "b", "c"}) == [["a", "b"], ["c"]]


def test_no_cycles_in_the_core():
    core = {name for name in GRAPH if under(name, CORE)}
    assert cycles(GRAPH, core) == []


def test_no_cycles_in_the_whole_package():
    assert cycles(GRAPH, set(GRAPH)) == []


def _violations(modules: Iterable[str], forbidden: Iterable[str]) -> List[str]:
    forbidden = tuple(forbidden)
    bad = []
    for name in sorted(modules):
        for imp in GRAPH[name]:  # direct imports, lazy ones too
            if under(imp.target, forbidden):
                bad.append(f"{name}:{imp.line} imports {imp.target}")
        bad.extend(f"importing {name} runs {t}" for t in sorted(eager_closure(GRAPH, name))
                   if under(t, forbidden))
    return bad


def test_layers_and_kernels_know_nothing_of_rl():
    math_modules = [n for n in GRAPH if under(n, ("rlstruct.layers", "rlstruct.kernels"))]
    assert _violations(math_modules, RL_LIBRARIES + TRAINERS) == []


def test_optim_stands_below_the_layers():
    # Layers tag their orthogonal weights for optim (rlstruct.optim.tags), never the reverse.
    optim = [n for n in GRAPH if under(n, ("rlstruct.optim",))]
    assert _violations(optim, ("rlstruct.layers",) + RL_LIBRARIES + TRAINERS) == []


def test_policies_know_nothing_of_the_trainers():
    forbidden = ("hydra", "rlstruct.runner", "rlstruct.algos")
    assert _violations([n for n in GRAPH if under(n, ("rlstruct.policies",))], forbidden) == []


# ---------------------------------------------------------------------------------------------
# what importing really does (fresh interpreters)
def _run(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("first", ["rlstruct", "stable_baselines3", "sb3_contrib"])
def test_import_rlstruct_registers_the_policy_with_sb3(first):
    pytest.importorskip("sb3_contrib")
    _run(
        f"import {first}\n"
        "import rlstruct\n"
        "from stable_baselines3 import PPO\n"
        "from sb3_contrib import TRPO\n"
        "assert 'StructuredMlpPolicy' in PPO.policy_aliases, PPO.policy_aliases\n"
        "assert 'StructuredMlpPolicy' in TRPO.policy_aliases, TRPO.policy_aliases\n"
        "from rlstruct.policies import StructuredActorCriticPolicy as P\n"
        "assert PPO.policy_aliases['StructuredMlpPolicy'] is P\n"
        "assert TRPO.policy_aliases['StructuredMlpPolicy'] is P\n"
    )


def test_importing_rlstruct_or_a_rollout_worker_loads_no_torch():
    # ES workers import rlstruct.algos.backends; the SB3 registration must not pull torch in.
    _run(
        "import sys, rlstruct, rlstruct.algos.backends, rlstruct.algos.rollout\n"
        "heavy = [m for m in ('torch', 'stable_baselines3', 'gymnasium') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )


def test_importing_the_layers_loads_no_rl_library():
    _run(
        "import sys, rlstruct.layers, rlstruct.kernels, rlstruct.optim\n"
        f"loaded = [m for m in {RL_LIBRARIES!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
