"""What ships in the image never imports the lab (lab/ is not installed on a node)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SHIPPED = ("firstboot", "mesh", "image")


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_nothing_shipped_imports_the_lab() -> None:
    files = [p for d in SHIPPED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported(p)
                                                  if m == "lab" or m.startswith("lab."))
                 for p in files}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_the_check_sees_an_import_of_the_lab(tmp_path: Path) -> None:
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from lab.netns import Lab\n    import lab\n"
                 "from .lab import y\nimport labrador\n")
    assert imported(p) == {"lab.netns", "lab", "labrador"}
