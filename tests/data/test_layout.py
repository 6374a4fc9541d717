"""The modules of ``tfrs_linear.data`` import each other in one direction only (no cycle)."""

import ast
from pathlib import Path

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data

PACKAGE = Path(data.__file__).parent


def package_imports(module):
    """The sibling modules ``module`` imports, anywhere in its source."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "tfrs_linear.data":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("tfrs_linear.data."):
                found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.rsplit(".", 1)[1] for a in node.names
                         if a.name.startswith("tfrs_linear.data."))
    return found


def test_data_modules_form_no_import_cycle():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    graph = {m: package_imports(m) & set(modules) for m in modules}
    assert graph["synthetic"] == {"readers"}
    assert graph["readers"] == {"fast_reader"}
    assert graph["fast_reader"] == set()
    done, active = set(), []

    def visit(m):
        assert m not in active, f"import cycle: {' -> '.join(active + [m])}"
        if m in done:
            return
        active.append(m)
        for n in sorted(graph[m]):
            visit(n)
        active.pop()
        done.add(m)

    for m in modules:
        visit(m)
