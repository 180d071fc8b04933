"""The cache format has one owner: only ``metamri.preprocess.cache`` knows the on-disk layout.

The data modules (``metamri/datamodules``) read entries through it; this test fails when one
of them opens HDF5 itself, lists a cache folder, or names a dataset/attribute of an entry.
"""

from __future__ import annotations

import ast
from pathlib import Path

from metamri.preprocess import cache

DATAMODULES = Path(cache.__file__).parents[1] / "datamodules"
#: Names of the entry's datasets and attributes (listing entries is checked by the glob rule).
LAYOUT_NAMES = {*cache._DATASETS, *cache._ATTRS, "maps", cache.MAPS_DIR}


def _code_strings(tree: ast.AST) -> list[str]:
    """String constants of the code, docstrings left out."""
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_the_data_modules_read_the_cache_only_through_cache_py():
    files = sorted(DATAMODULES.glob("*.py"))
    assert {"dataset.py", "datamodule.py"} <= {p.name for p in files}
    for path in files:
        tree = ast.parse(path.read_text())
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imports |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "h5py" not in imports, f"{path.name} opens HDF5 itself"
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert not calls & {"glob", "rglob"} or path.name == "datamodule.py" and _only_raw_globs(tree), path.name
        named = sorted(set(_code_strings(tree)) & LAYOUT_NAMES)
        assert not named, f"{path.name} names the cache layout: {named}"


def _only_raw_globs(tree: ast.AST) -> bool:
    """``datamodule.py`` globs the *raw* directory (``*.h5``/``*.mat`` sources), never the cache."""
    globs = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in ("glob", "rglob")]
    return all(isinstance(g.func.value, ast.Name) and g.func.value.id == "raw_dir" for g in globs)
