"""The package's layers: code that runs in one place never imports code that runs above it
(the server does not import kernel-side code; storage needs only the standard library and
numpy), so each part can be read, tested and installed where it runs."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).parent.parent / "jupyter_lowcost"

#: Modules at the top of the package every layer may import (stdlib only themselves).
SHARED = {"_version", "env", "words", "protocol"}
#: What each layer may import of the package, besides itself and SHARED.
ALLOWED = {
    "shared": set(),
    "storage": set(),
    "client": set(),
    "kernel": {"storage", "client"},
    "instance": {"kernel", "storage", "client"},
    "backends": {"storage"},
    "server": {"backends", "storage"},
    "cli": {"storage", "client"},
}


def layer_of(module: str) -> str | None:
    """``jupyter_lowcost.server.manager`` -> ``server``; None for the package's hooks."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "launcher"):
        return None  # the hooks Jupyter looks for, and the launcher's command name
    return "shared" if parts[1] in SHARED else parts[1]


def imports_of(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                names = [name] if node.module else [f"{name}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            found += [(name, node.lineno, id(node) in top_level) for name in names]
    return found


def modules() -> list[tuple[Path, str]]:
    result = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "labextension" in path.parts:
            continue
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        result.append((path, ".".join(parts)))
    return result


def upward_imports() -> list[str]:
    """Every import of a layer above the importing module's."""
    wrong = []
    for path, module in modules():
        layer = layer_of(module)
        if layer is None:
            continue
        for imported, line, _ in imports_of(path, module):
            if not imported.startswith("jupyter_lowcost"):
                continue
            target = layer_of(imported)
            if target is None:
                wrong.append(f"{module}:{line} imports the package root ({imported})")
            elif target not in {layer, "shared"} | ALLOWED[layer]:
                wrong.append(f"{module}:{line} ({layer}) imports {imported} ({target})")
    return wrong


def foreign_storage_imports() -> list[str]:
    """Module-level imports in storage (and the shared modules) of anything but the
    standard library and numpy."""
    wrong = []
    for path, module in modules():
        if layer_of(module) not in ("storage", "shared"):
            continue
        for imported, line, top_level in imports_of(path, module):
            root = imported.split(".")[0]
            if not top_level or root in ("jupyter_lowcost", "numpy", "__future__"):
                continue
            if root not in sys.stdlib_module_names:
                wrong.append(f"{module}:{line} imports {imported}")
    return wrong


#: The most lines a module of the package may have: past it, a module does more than one job.
MOST_LINES = 500


def long_modules() -> list[str]:
    """Every module of the package over :data:`MOST_LINES` lines, with its length."""
    return [
        f"{module}: {lines} lines"
        for path, module in modules()
        if (lines := len(path.read_text().splitlines())) > MOST_LINES
    ]


def in_fresh_python(*args: str) -> Any:
    """Run this file's analysis in a Python of its own and return what it prints. (The
    machine's CPython 3.11.7 can fail ``ast.parse`` with "AST constructor recursion depth
    mismatch" in a process that ran other tests, python/cpython#106905.)"""
    result = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_no_layer_imports_a_layer_above_it() -> None:
    wrong = in_fresh_python("upward")
    assert wrong == [], "\n".join(wrong)


def test_storage_needs_only_the_standard_library_and_numpy() -> None:
    wrong = in_fresh_python("storage")
    assert wrong == [], "\n".join(wrong)


def test_no_module_is_over_500_lines() -> None:
    long = long_modules()
    assert long == [], "split these by role:\n" + "\n".join(long)


def test_the_check_sees_a_long_module(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "short.py").write_text("x = 1\n" * MOST_LINES)
    (tmp_path / "long.py").write_text("x = 1\n" * (MOST_LINES + 1))
    monkeypatch.setattr(
        sys.modules[__name__], "modules", lambda: [(p, p.stem) for p in tmp_path.glob("*.py")]
    )
    assert long_modules() == [f"long: {MOST_LINES + 1} lines"]


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "manager.py"
    source.write_text("from ...kernel.magics import USAGE\nfrom . import events\n")
    found = in_fresh_python("imports", str(source), "jupyter_lowcost.server.instances.x")
    assert found == ["jupyter_lowcost.kernel.magics", "jupyter_lowcost.server.instances.events"]
    assert layer_of(found[0]) == "kernel" and "kernel" not in ALLOWED["server"]


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "upward":
        print(json.dumps(upward_imports()))
    elif what == "storage":
        print(json.dumps(foreign_storage_imports()))
    else:
        print(json.dumps([name for name, _, _ in imports_of(Path(sys.argv[2]), sys.argv[3])]))
