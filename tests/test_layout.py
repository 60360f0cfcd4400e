"""The package's layout: imports point one way, and no private name crosses a module boundary.

The module graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` anywhere in a module, function-level ones included (a lazy import is still a
dependency; it only runs later). ``from package import name`` is an edge to ``package.name`` when
that is a module, else to ``package``. Importing a submodule runs its parent packages'
``__init__`` first; those implicit edges are not counted (every package would be a cycle), only
what a module's own import statements name.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "entropy_attn"

# The parts of the package, lowest first: a module may import from its own part and from the parts
# below it, never from one above (docs/layout.md draws the same picture).
PARTS = [
    ("utilities", ("_extras", "_quiet", "_source_tree", "sizes")),
    ("kernels", ("kernels",)),
    ("op", ("op",)),
    ("fixes", ("fixes",)),
    ("integration", ("integration",)),
    ("public API", ("",)),  # entropy_attn/__init__.py: op and integration's public names
    ("tiny", ("tiny",)),
    ("science", ("science",)),
    ("configs", ("configs",)),
    ("zoo", ("zoo",)),
    ("cli", ("cli",)),
]


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for entropy_attn/ and kernels/ (installed as entropy_attn.kernels)."""
    found = {}
    for folder, prefix in ((root / PACKAGE, PACKAGE), (root / "kernels", f"{PACKAGE}.kernels")):
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    if (root / "kernels").is_dir():
        found.setdefault(f"{PACKAGE}.kernels", root / "kernels")  # a namespace package
    return found


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" or path.is_dir() else module.rpartition(".")[0]


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(target module, imported name or "", line)`` for each package import in ``module``."""
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.append((alias.name, "", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module, path).split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not (source == PACKAGE or source.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                child = f"{source}.{alias.name}"
                if child in modules:
                    found.append((child, "", node.lineno))
                else:
                    found.append((source, alias.name, node.lineno))
    return found


def module_attribute_uses(path: Path, modules: dict[str, Path], module: str) -> list[tuple]:
    """``(module, attribute, line)`` for each ``m._name`` where ``m`` is bound by an import of a
    package module in this file (``import entropy_attn.x as m``, ``from . import m``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bound = {}
    for target, name, _ in imports_of(module, path, modules):
        if not name:
            bound[target.rsplit(".", 1)[-1]] = target
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.asname:
                    source = alias.name
                    if isinstance(node, ast.ImportFrom):
                        targets = [t for t, n, _ in imports_of(module, path, modules) if not n]
                        source = next((t for t in targets if t.endswith("." + alias.name)), None)
                    if source in modules:
                        bound[alias.asname] = source
    uses = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            uses.append((bound[node.value.id], node.attr, node.lineno))
    return uses


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = source_modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        if path.is_dir():
            continue
        for target, _, _ in imports_of(module, path, modules):
            if target != module and target in modules:
                graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def part_of(module: str) -> int:
    """Index in :data:`PARTS` of the part a module belongs to."""
    rest = module.removeprefix(PACKAGE).removeprefix(".")
    head = rest.split(".")[0]
    for index, (_, prefixes) in enumerate(PARTS):
        if head in prefixes:
            return index
    raise AssertionError(f"{module} belongs to no part of PARTS: add it (and to docs/layout.md)")


def private_uses(root: Path = ROOT) -> list[str]:
    """Each use of another module's ``_private`` name: ``from m import _x`` and ``m._x``."""
    modules = source_modules(root)
    found = []
    for module, path in modules.items():
        if path.is_dir():
            continue
        uses = [(t, n, line) for t, n, line in imports_of(module, path, modules) if n]
        uses += module_attribute_uses(path, modules, module)
        for target, name, line in uses:
            # Private modules (entropy_attn._extras) are the package's own utilities: importing
            # them is fine; a private name inside any module is not.
            if name.startswith("_") and not name.startswith("__") and target != module:
                found.append(f"{path.relative_to(root)}:{line}: {target}.{name}")
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40, "the graph must see the package's modules"
    assert "entropy_attn.integration.pipelines" in graph["entropy_attn.integration.lifecycle"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_parts():
    graph = import_graph()
    upward = [
        f"{a} ({PARTS[part_of(a)][0]}) imports {b} ({PARTS[part_of(b)][0]})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if part_of(b) > part_of(a)
    ]
    assert not upward, "\n".join(upward)


def test_no_private_name_crosses_modules():
    found = private_uses()
    assert not found, "private names used across modules:\n" + "\n".join(found)


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_planted_cycle_is_found_even_through_a_lazy_import(tmp_path):
    root = _plant(
        tmp_path,
        {
            "entropy_attn/__init__.py": "from .a import f\n",
            "entropy_attn/a.py": "from .sub.b import g\n\ndef f():\n    return g()\n",
            "entropy_attn/sub/__init__.py": "",
            "entropy_attn/sub/b.py": "def g():\n    from ..a import f\n    return f\n",
            "entropy_attn/sub/c.py": "from . import b\n",
        },
    )
    graph = import_graph(root)
    assert graph["entropy_attn.sub.c"] == {"entropy_attn.sub.b"}
    assert find_cycle(graph) == ["entropy_attn.a", "entropy_attn.sub.b", "entropy_attn.a"]
    (root / "entropy_attn/sub/b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(root)) is None


def test_planted_private_uses_are_found(tmp_path):
    root = _plant(
        tmp_path,
        {
            "entropy_attn/__init__.py": "",
            "entropy_attn/_util.py": "def shared():\n    pass\n\ndef _hidden():\n    pass\n",
            "entropy_attn/a.py": "from ._util import shared, _hidden\n",
            "entropy_attn/b.py": "from . import _util as u\n\nu._hidden()\nu.shared()\n",
            "entropy_attn/c.py": "import entropy_attn.a\n\nentropy_attn.a.shared\n",
        },
    )
    found = private_uses(root)
    assert found == [
        "entropy_attn/a.py:1: entropy_attn._util._hidden",
        "entropy_attn/b.py:3: entropy_attn._util._hidden",
    ], found


MAX_LINES = 400


def test_a_long_module_says_why_it_is_one_file():
    """A module over about 400 lines states at its top why it is one file ("One file because")."""
    unexplained = []
    for module, path in source_modules().items():
        if path.is_dir():
            continue
        text = path.read_text()
        lines = text.count("\n")
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and "One file because" not in docstring:
            unexplained.append(f"{module}: {lines} lines")
    assert not unexplained, "split these, or say why not in the docstring:\n" + "\n".join(
        unexplained
    )


def test_the_op_and_the_kernel_know_nothing_of_diffusers():
    """STYLE.md habit 1: Triton code and the op layer import neither diffusers nor transformers
    (anywhere in the module, lazily or not)."""
    found = []
    for name, path in source_modules().items():
        inside = name.startswith(f"{PACKAGE}.op") or name.startswith(f"{PACKAGE}.kernels")
        if not inside or path.is_dir():  # kernels/ itself is a namespace folder
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for imported in names:
                if imported.split(".")[0] in ("diffusers", "transformers"):
                    found.append(f"{name}:{node.lineno} imports {imported}")
    assert any(n.startswith(f"{PACKAGE}.op.") for n in source_modules()), "no op modules read"
    assert not found, "\n".join(found)
