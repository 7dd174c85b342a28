"""The README's layout section names every module of the package and every benchmark and script,
and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Layout")
    return text[start:text.index("\n## ", start + 1)]


def test_readme_layout_names_every_module():
    layout = _layout()
    modules = [p for p in (ROOT / "src" / "neat_llm").rglob("*.py") if p.name != "__init__.py"]
    missing = [str(p.relative_to(ROOT)) for p in modules if not re.search(rf"\b{re.escape(p.name)}\b", layout)]
    assert not missing, f"README's layout section does not name {missing}"
    scripts = [p for d in ("benchmarks", "scripts") for p in (ROOT / d).glob("*.py") if not p.name.startswith("_")]
    missing = [p.name for p in scripts if p.name not in layout]
    assert not missing, f"README's layout section does not name {missing}"


def test_readme_layout_names_nothing_that_is_gone():
    layout = _layout()
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", layout))
    here = {p.name for d in ("src/neat_llm", "benchmarks", "scripts") for p in (ROOT / d).rglob("*.py")}
    assert not named - here, f"README's layout section names files that do not exist: {sorted(named - here)}"


def test_no_function_body_is_longer_than_80_lines():
    import ast

    long = []
    for p in (ROOT / "src" / "neat_llm").rglob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = n.body
                if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1:
                    body = body[1:]  # the docstring is not code
                if n.end_lineno - body[0].lineno + 1 > 80:
                    long.append(f"{p.relative_to(ROOT)}:{n.name}")
    assert not long, f"function bodies longer than 80 lines: {long}"


def test_the_model_runs_through_one_seam():
    """No module outside models/ and hooks.py calls the wrapped model or registers a raw hook."""
    hits = []
    for p in (ROOT / "src" / "neat_llm").rglob("*.py"):
        rel = p.relative_to(ROOT / "src" / "neat_llm")
        if rel.parts[0] == "models" or rel.name == "hooks.py":
            continue
        for i, line in enumerate(p.read_text().splitlines()):
            if re.search(r"\.hf\(|\.hf\.generate\(|register_forward(_pre)?_hook", line):
                hits.append(f"{rel}:{i + 1}")
    assert not hits, f"the model run or hooked outside the seam: {hits}"
