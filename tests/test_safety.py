"""Safety audit of the package source (issue 14), kept true by a test: every ``torch.load`` reads
weights only (``weights_only=True``: no pickled code runs), and ``trust_remote_code`` is never
switched on in the source (only a user's config may pass True through)."""

from __future__ import annotations

import ast
from pathlib import Path

import lrdpo_fast

ROOT = Path(lrdpo_fast.__file__).parent


def _calls(attr: str):
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name == attr:
                    yield path.relative_to(ROOT.parent), node


def _kw(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_torch_load_is_weights_only():
    calls = list(_calls("load"))
    torch_loads = [
        (p, n) for p, n in calls if isinstance(n.func, ast.Attribute) and getattr(n.func.value, "id", None) == "torch"
    ]
    assert torch_loads, "the scan found no torch.load at all: it is looking in the wrong place"
    bad = [
        f"{p}:{n.lineno}"
        for p, n in torch_loads
        if not (isinstance(_kw(n, "weights_only"), ast.Constant) and _kw(n, "weights_only").value is True)
    ]
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_trust_remote_code_is_never_hard_wired_on():
    bad = []
    for attr in ("from_pretrained", "LLM"):
        for p, n in _calls(attr):
            v = _kw(n, "trust_remote_code")
            if isinstance(v, ast.Constant) and v.value is True:
                bad.append(f"{p}:{n.lineno}")
    assert not bad, f"trust_remote_code=True in the source: {bad}"
    for path in ROOT.rglob("*.py"):
        assert "trust_remote_code: bool = True" not in path.read_text(encoding="utf-8"), path
