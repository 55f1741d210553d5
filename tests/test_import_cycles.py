"""The package's imports run one way: no cycle through any import, deferred (function-level) ones included."""

import ast

from conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "migrator"


def module_name(path, root=PROJECT_ROOT):
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path, modules, root=PROJECT_ROOT):
    """Every migrator module `path` imports, at any depth of its code (a package face counts as a module)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # a submodule by name is that module; any other name is the package face's
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    # importing a.b.c from outside package a.b runs a.b's face first: that is an import of the face too
    # (but not a face this module sits in: that one is running already, unless named explicitly as above)
    outer = {m.rsplit(".", k)[0] for m in found for k in range(1, m.count("."))}
    outer = {m for m in outer if not name.startswith(m + ".")}
    return {m for m in found | outer if m in modules and m != name}


def import_graph():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, paths) for name, path in paths.items()}


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def shortest_cycle(graph, component, start):
    """The shortest loop from `start` back to itself inside a component, to name in the failure."""
    members = set(component)
    paths, queue = {start: [start]}, [start]
    while queue:
        node = queue.pop(0)
        for dep in sorted(graph[node] & members):
            if dep == start:
                return paths[node] + [start]
            if dep not in paths:
                paths[dep] = paths[node] + [dep]
                queue.append(dep)
    return component


def named_cycles(graph):
    """Each distinct loop found as the shortest one through some module of a cycle."""
    loops = []
    for component in cycles(graph):
        for start in component:
            loop = shortest_cycle(graph, component, start)[:-1]
            turned = loop[loop.index(min(loop)):] + loop[:loop.index(min(loop))]
            if turned + turned[:1] not in loops:
                loops.append(turned + turned[:1])
    return [" -> ".join(loop) for loop in loops]


def test_the_graph_sees_deferred_relative_and_package_face_imports(tmp_path):
    (tmp_path / "migrator" / "sub").mkdir(parents=True)
    (tmp_path / "migrator" / "__init__.py").write_text("")
    (tmp_path / "migrator" / "sub" / "__init__.py").write_text("from .leaf import thing\n")
    (tmp_path / "migrator" / "sub" / "leaf.py").write_text("def f():\n    from migrator.sub import other\n")
    (tmp_path / "migrator" / "top.py").write_text("def g():\n    from . import sub\n    import migrator.sub.leaf\n")
    paths = {module_name(p, tmp_path): p for p in (tmp_path / "migrator").rglob("*.py")}
    graph = {name: imports_of(path, paths, tmp_path) for name, path in paths.items()}
    assert graph["migrator.sub"] == {"migrator.sub.leaf"}
    assert graph["migrator.sub.leaf"] == {"migrator.sub"}  # `other` is no module: the face is what runs
    assert graph["migrator.top"] == {"migrator.sub", "migrator.sub.leaf"}
    (tmp_path / "migrator" / "sub" / "leaf.py").write_text("from migrator.top import g\n")  # runs sub's face first
    (tmp_path / "migrator" / "top.py").write_text("from migrator.sub.leaf import f\n")
    assert imports_of(paths["migrator.top"], paths, tmp_path) == {"migrator.sub", "migrator.sub.leaf"}
    assert cycles(graph) == [["migrator.sub", "migrator.sub.leaf"]]
    assert named_cycles(graph) == ["migrator.sub -> migrator.sub.leaf -> migrator.sub"]


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    loops = named_cycles(graph)
    assert not loops, "import cycles (a value type to a leaf module, or a report that receives what it prints):\n" \
        + "\n".join(loops)
