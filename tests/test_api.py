"""Every name docs/api.md documents is importable: the test follows the doc.

Two forms are read from the doc: ``ia.<name>`` anywhere (an attribute of ``intermod.analysis``)
and bullets ``- `intermod.analysis.<module>`: `a`, `b(...)`, … — …`` (the module, then the
names it documents, up to the first "—"). Every ``intermod.analysis.<path>`` mentioned at all
must be importable too.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
TEXT = DOC.read_text()
BULLETS = re.split(r"\n(?=- )", TEXT)

IA_NAMES = sorted(set(re.findall(r"\bia\.([A-Za-z_]\w*)", TEXT)))
MODULE_PATHS = sorted(set(re.findall(r"\bintermod\.analysis(?:\.[A-Za-z_]\w*)+", TEXT)))


def _module_names() -> list[tuple[str, str]]:
    """(module path, name) for every bullet that starts with a module path."""
    out = []
    for bullet in BULLETS:
        m = re.match(r"- `(intermod\.analysis(?:\.\w+)+)`:(.*)", bullet, re.S)
        if m is None:
            continue
        listed = m.group(2).split("—", 1)[0]
        out += [(m.group(1), n) for n in re.findall(r"`([A-Za-z_]\w*)(?:\([^`]*\))?`", listed)]
    return out


MODULE_NAMES = _module_names()


def _resolve(path: str):
    """A module, or an attribute of the longest importable prefix."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        parent, _, attr = path.rpartition(".")
        return getattr(_resolve(parent), attr)


def test_the_doc_is_parsed():
    # guards against a format change that would make the tests below vacuous
    assert {"compute_basis", "build_graph", "find_modules", "diagnose", "hf"} <= set(IA_NAMES)
    assert "intermod.analysis.validation.remedies" in MODULE_PATHS
    assert ("intermod.analysis.validation.remedies", "noise_epsilon") in MODULE_NAMES
    assert ("intermod.analysis.examples", "load") in MODULE_NAMES
    assert len(MODULE_NAMES) >= 20


@pytest.mark.parametrize("name", IA_NAMES)
def test_ia_name(name):
    from intermod import analysis as ia

    assert getattr(ia, name) is not None


@pytest.mark.parametrize("path", MODULE_PATHS)
def test_module_path(path):
    assert _resolve(path) is not None


@pytest.mark.parametrize(("path", "name"), MODULE_NAMES)
def test_module_name(path, name):
    assert hasattr(_resolve(path), name), f"{path} has no {name!r} (docs/api.md)"


def test_package_all_is_documented():
    from intermod import analysis as ia

    assert set(ia.__all__) <= set(IA_NAMES), set(ia.__all__) - set(IA_NAMES)
