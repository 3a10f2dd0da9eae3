"""The package's layers, enforced: each sub-package imports only those below it, vllm only in the
loop (and the CLI), and the light imports stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lrdpo_fast"
# rank of each sub-package: a module may import its own sub-package and lower ranks only.
# demo/ and examples/ are assets (task, start policy, example data) that the loop and CLI read.
RANKS = {"kernels": 0, "ops": 1, "data": 2, "model": 3, "train": 4, "demo": 4, "examples": 4, "loop": 5, "cli": 6}
VLLM_ALLOWED = ("loop", "cli")


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        sub = rel.parts[0] if len(rel.parts) > 1 else None
        yield path, sub
    for path in sorted((ROOT / "kernels").glob("*.py")):
        yield path, "kernels"


def _imports(path: Path, sub: str | None) -> list[tuple[str, int]]:
    """(absolute dotted name, line) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "kernels":
        package = ["lrdpo_fast", "kernels"]
    else:
        package = list(rel.with_suffix("").parts[:-1]) if rel.name != "__init__.py" else list(rel.parts[:-1])
        if rel.name != "__init__.py":
            package = list(rel.parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                if not node.module:
                    out += [(f"{name}.{a.name}", node.lineno) for a in node.names]
                    continue
            else:
                name = node.module or ""
            out.append((name, node.lineno))
    return out


def test_each_layer_imports_only_layers_below_it():
    bad = []
    for path, sub in _modules():
        if sub is None or sub not in RANKS:
            continue
        for name, line in _imports(path, sub):
            parts = name.split(".")
            if parts[0] != "lrdpo_fast" or len(parts) < 2 or parts[1] not in RANKS:
                continue
            if RANKS[parts[1]] > RANKS[sub]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({sub}) imports {name}")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_only_the_loop_and_cli_import_vllm():
    bad = [
        f"{path.relative_to(ROOT)}:{line}"
        for path, sub in _modules()
        for name, line in _imports(path, sub)
        if name.split(".")[0] == "vllm" and sub not in VLLM_ALLOWED
    ]
    assert not bad, "vllm imported outside loop/ and cli/: " + ", ".join(bad)


@pytest.mark.parametrize(
    "module, banned",
    [
        ("lrdpo_fast", ("transformers", "vllm", "triton", "datasets")),
        ("lrdpo_fast.ops", ("transformers", "vllm")),
        ("lrdpo_fast.data", ("transformers", "vllm")),
        ("lrdpo_fast.train", ("vllm",)),
        ("lrdpo_fast.loop.config", ("vllm",)),
    ],
)
def test_light_imports_stay_light(module, banned):
    code = f"import sys, {module}; print(','.join(m for m in {banned!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"
