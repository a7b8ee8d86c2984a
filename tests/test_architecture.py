"""The package's shape: no import cycles between its modules (function-level imports included),
``__all__`` in every module, and the files shipped with checkpoints import only each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llm_embed"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def relative_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at any level of the file."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # from . import x
                found.update(f"{target}.{alias.name}" for alias in node.names)
            else:
                found.add(target)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llm_embed"):
            found.add(node.module)
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules and name != module_name(path)}


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): relative_imports(path) for path in PACKAGE.rglob("*.py")}


def test_no_import_cycles():
    graph = {name: {d for d in deps if not d.endswith("__init__")} for name, deps in import_graph().items()}
    graph = {name: deps - {"llm_embed", "llm_embed.evaluation"} for name, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_every_module_declares_all():
    missing = [str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py")
               if "__all__" not in {t.id for n in ast.parse(path.read_text()).body if isinstance(n, ast.Assign)
                                    for t in n.targets if isinstance(t, ast.Name)}]
    assert missing == []


def test_checkpoint_code_is_closed_under_imports():
    """What modeling and configuration reach is what ships with a checkpoint: it must not reach the
    training, evaluation or command-line modules (they need optional packages)."""
    graph = import_graph()
    reached, todo = set(), ["llm_embed.modeling_llm_embed", "llm_embed.configuration_llm_embed"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(graph[name])
    assert not reached & {"llm_embed.train", "llm_embed.study", "llm_embed.cli", "llm_embed.data",
                          "llm_embed.lora", "llm_embed.mteb_encoder", "llm_embed.bundled"}, sorted(reached)
    assert not any(name.startswith("llm_embed.evaluation") for name in reached), sorted(reached)


def test_shipped_modules_are_direct_imports_of_the_entry_files():
    """transformers 5.2 copies only the direct relative imports of modeling_llm_embed.py (and of
    configuration_llm_embed.py for AutoConfig) into its trust_remote_code module cache; a module
    reached only through another shipped module is then missing when the checkpoint loads without
    llm_embed (found by the floor run of test_loading_without_llm_embed_asks_nothing_and_warns_nothing)."""
    graph = import_graph()
    for entry in ("llm_embed.modeling_llm_embed", "llm_embed.configuration_llm_embed"):
        reached, todo = set(), list(graph[entry])
        while todo:
            name = todo.pop()
            if name not in reached:
                reached.add(name)
                todo.extend(graph[name])
        assert reached - {entry} <= graph[entry], (entry, sorted(reached - {entry} - graph[entry]))
