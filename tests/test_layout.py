"""The layout rules of docs/architecture.md, read from the source (imports, sizes)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ANALYSIS = sorted((ROOT / "analysis").rglob("*.py"))
MAX_LINES = 450   # "no module over ~400 lines"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(("intermod", *parts))


def imports(path: Path) -> set[str]:
    """Absolute dotted names of everything ``path`` imports (relative imports resolved)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            out.add(mod)
            out |= {f"{mod}.{alias.name}" for alias in node.names}
    return out


def test_imports_are_resolved():
    names = imports(ROOT / "analysis" / "diagnostics" / "driver.py")
    assert "intermod.analysis.core.nodes" in names and "torch" in names
    assert "intermod.analysis.diagnostics.counting" in names


@pytest.mark.parametrize("path", [p for p in ANALYSIS if "core" in p.relative_to(ROOT).parts],
                         ids=lambda p: p.name)
def test_core_imports_nothing_around_it(path):
    outside = {n for n in imports(path)
               if n.startswith("intermod.") and not n.startswith("intermod.analysis.core")}
    assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


@pytest.mark.parametrize("path", ANALYSIS, ids=lambda p: str(p.relative_to(ROOT)))
def test_analysis_never_imports_grpc_server_or_client(path):
    bad = {n for n in imports(path) if n.split(".")[0] == "grpc"
           or n.startswith(("intermod.server", "intermod.client", "intermod.v1"))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path.name}: split it along its concepts"


def test_every_package_ships_in_the_wheel():
    """pyproject lists its packages by hand (the repository root is ``intermod``): a package
    missing there imports from a checkout but is absent from a built wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {_module_name(p) for d in ("analysis", "server", "client")
               for p in (ROOT / d).rglob("__init__.py")}
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
