"""Layers point one way: the lower packages never import the server, and the store's file layer needs no torch.

Each check runs in a fresh interpreter, so what the rest of the suite imported cannot hide a dependency.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules_after_import(*modules: str) -> set[str]:
    code = f"import json, sys\nfor m in {list(modules)!r}: __import__(m)\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("package", ["prompt_store", "kernels"])
def test_lower_packages_never_import_the_server(package):
    modules = [f"{package}.{p.stem}" for p in sorted((ROOT / package).glob("*.py")) if p.stem != "__init__"]
    loaded = _modules_after_import(package, *modules)
    assert not {m for m in loaded if m == "server" or m.startswith("server.")}


def test_the_store_file_layer_needs_no_torch():
    loaded = _modules_after_import("prompt_store.storage", "prompt_store.manifest", "prompt_store.store_config")
    assert "torch" not in loaded
