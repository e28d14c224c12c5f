"""The house's one direction of flow, checked from the source (README, "Architecture").

Every import of every module of the apps is read from its syntax tree: at module level, inside functions,
under `if TYPE_CHECKING`, in `try` blocks, `import a.b` and `from a import b` and relative forms alike. From
them: the apps may only import downwards (LAYERS), the app graph has no cycle, and no two modules import
each other even through a function-local import (the way a circle hides).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("audiences", "outputs", "connections", "forwarding", "config", "local_partners")
# config is two things: the neutral base every app may use (settings, the Celery app, queueing, error
# translation), and the root that mounts every app's URLs and API.
CONFIG_ROOT_MODULES = {"config.urls", "config.api_urls"}

# Which apps each may import, in the order data flows: data enters in audiences, membership changes
# leave it as its change log, forwarding turns them into deliveries, which leave through outputs.
LAYERS: dict[str, set[str]] = {
    "config": set(),
    "outputs": {"config"},
    "audiences": {"config"},
    "connections": {"config", "audiences", "outputs"},
    "forwarding": {"config", "audiences", "outputs", "connections"},
    "config (root)": {"config", "audiences", "outputs", "connections", "forwarding"},
    # The local partner servers stand for the partners' real APIs: they know nothing of this service.
    "local_partners": set(),
}


# The seams inside audiences/: the criteria language knows nothing of membership or ingestion, and
# membership knows nothing of ingestion, the audience services or the admin and API above it.
AUDIENCES_SEAMS: dict[str, tuple[str, ...]] = {
    "audiences.criteria": ("audiences.criteria", "audiences.models", "audiences.identities"),
    "audiences.membership": ("audiences.membership", "audiences.criteria", "audiences.models", "audiences.identities"),
}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    path: Path
    line: int
    target: str  # the dotted name imported, resolved to a module of ours where it is one

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.target}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path, packages: Iterable[str]) -> list[Path]:
    return sorted(p for package in packages for p in (root / package).rglob("*.py"))


def imports_of(path: Path, root: Path, modules: set[str]) -> Iterator[Import]:
    """Every import in the file, wherever it stands in it."""
    importer = module_name(path, root)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            for alias in node.names:
                # `from a import b`: the module a.b when b is one, else (a name defined in) a.
                submodule = f"{base}.{alias.name}"
                yield Import(importer, path, node.lineno, submodule if submodule in modules else base)


def all_imports(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> list[Import]:
    files = source_files(root, packages)
    modules = {module_name(p, root) for p in files}
    return [i for path in files for i in imports_of(path, root, modules)]


def layer(module: str) -> str | None:
    """The app a module belongs to (config split in base and root); None for anything not ours."""
    top = module.split(".")[0]
    if top == "config" and module in CONFIG_ROOT_MODULES:
        return "config (root)"
    return top if top in PACKAGES else None


def upward_imports(imports: Iterable[Import]) -> list[Import]:
    return [
        i
        for i in imports
        if layer(i.target) is not None
        and layer(i.target) != layer(i.importer)
        and layer(i.target) not in LAYERS[layer(i.importer)]
    ]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def graph(imports: Iterable[Import], key) -> tuple[dict[str, set[str]], dict[tuple[str, str], Import]]:
    """Edges between key(importer) and key(target) (ours only, no self-loops), with one import shown per edge."""
    edges: dict[str, set[str]] = {}
    example: dict[tuple[str, str], Import] = {}
    for i in imports:
        a, b = key(i.importer), key(i.target)
        if a is None or b is None or a == b:
            continue
        edges.setdefault(a, set()).add(b)
        example.setdefault((a, b), i)
    return edges, example


def describe(component: list[str], edges: dict[str, set[str]], example: dict[tuple[str, str], Import]) -> str:
    inside = set(component)
    return "\n".join(f"  {example[(a, b)]}" for a in component for b in sorted(edges.get(a, ())) if b in inside)


# --- the house ---------------------------------------------------------------------------------


def test_every_app_imports_only_downwards():
    wrong = upward_imports(all_imports())
    assert not wrong, "Imports against the flow (README, Architecture; allowed: tests/test_architecture.LAYERS):\n" + (
        "\n".join(
            f"  {i} ({layer(i.importer)} may import only {sorted(LAYERS[layer(i.importer)]) or 'none'})" for i in wrong
        )
    )


def test_the_apps_form_no_cycle():
    edges, example = graph(all_imports(), layer)
    found = cycles(edges)
    assert not found, "Apps importing each other:\n" + "\n".join(describe(c, edges, example) for c in found)


def test_no_two_modules_import_each_other_even_from_inside_a_function():
    edges, example = graph(all_imports(), lambda name: name if layer(name) is not None else None)
    found = cycles(edges)
    assert not found, "Import cycles between modules (a function-local import hides one, it does not break it):\n" + (
        "\n\n".join(describe(c, edges, example) for c in found)
    )


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_seams_inside_audiences_hold():
    wrong = [
        f"  {i} ({seam} may import only {', '.join(allowed)} of audiences)"
        for i in all_imports(packages=("audiences",))
        for seam, allowed in AUDIENCES_SEAMS.items()
        if within(i.importer, seam)
        and within(i.target, "audiences")
        and not any(within(i.target, prefix) for prefix in allowed)
    ]
    assert not wrong, "Imports across the seams of audiences/:\n" + "\n".join(wrong)


def test_the_layers_themselves_are_acyclic():
    assert cycles({name: set(allowed) for name, allowed in LAYERS.items()}) == []


# --- the checker, on a house built to break the rules ----------------------------------------------


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checker_sees_every_form_of_import(tmp_path):
    write(tmp_path, "audiences/__init__.py", "")
    write(tmp_path, "audiences/services.py", "from forwarding.planner import plan\n")
    write(
        tmp_path,
        "audiences/recompute.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import connections.models\n"
        "def later():\n    import forwarding.doorbell as doorbell\n    return doorbell\n",
    )
    write(tmp_path, "audiences/evaluation.py", "from . import services\nfrom .services import x\n")
    write(tmp_path, "forwarding/__init__.py", "")
    write(tmp_path, "forwarding/planner.py", "from audiences import recompute\n")
    write(tmp_path, "forwarding/doorbell.py", "def ring():\n    from forwarding import planner\n")
    write(tmp_path, "connections/__init__.py", "")
    write(tmp_path, "connections/models.py", "")
    write(tmp_path, "outputs/__init__.py", "")
    write(tmp_path, "outputs/base.py", "try:\n    from connections import models\nexcept ImportError:\n    pass\n")
    write(tmp_path, "local_partners/__init__.py", "")
    write(tmp_path, "local_partners/mailchimp.py", "import audiences.services\n")

    imports = all_imports(tmp_path, ("audiences", "forwarding", "connections", "outputs", "local_partners"))
    found = {(i.importer, i.target, i.line) for i in imports}
    assert ("audiences.evaluation", "audiences.services", 1) in found  # relative, resolved
    assert ("audiences.evaluation", "audiences.services", 2) in found
    assert {(str(i.path.relative_to(tmp_path)), i.line, i.target) for i in upward_imports(imports)} == {
        ("audiences/services.py", 1, "forwarding.planner"),
        ("audiences/recompute.py", 3, "connections.models"),  # under TYPE_CHECKING
        ("audiences/recompute.py", 5, "forwarding.doorbell"),  # inside a function, `import a.b as c`
        ("outputs/base.py", 2, "connections.models"),  # in a try block
        ("local_partners/mailchimp.py", 1, "audiences.services"),
    }
    edges, _ = graph(imports, layer)
    assert cycles(edges) == [["audiences", "forwarding"]]
    edges, _ = graph(imports, lambda name: name)
    assert ["audiences.recompute", "forwarding.doorbell", "forwarding.planner"] in cycles(edges)
