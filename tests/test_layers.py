"""The architecture, enforced: every import in maskgen (module-level and inside functions)
goes down the layers or stays in its own package, packages import each other without
circles, only the CLI uses typer (only the CLI and the benchmarks print with rich), and
`maskgen --help` loads no heavy library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "maskgen"

# bottom to top; a module may import its own layer's modules or lower ones
LAYERS = [
    {"assets", "compiled", "errors", "files", "schemas", "images", "recordio", "faces", "masks"},
    {"jobs"},
    {"pipeline"},
    {"datasets"},
    {"recognition"},
    {"evaluation"},
    {"video"},
    {"api", "bench", "experiments"},
    {"cli"},
]
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> set[str]:
    """Every maskgen module `path` imports, at any depth of the file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from maskgen.x import module`
    return {name for name in names if name == "maskgen" or name.startswith("maskgen.")}


def part(module: str) -> str | None:
    """The top-level part of maskgen a module belongs to (None: the package root)."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else None


def edges() -> set[tuple[str, str, str]]:
    """(importing module, its part, imported part) for every import between two parts."""
    known = modules()
    found = set()
    for module, path in known.items():
        for target in imports(path):
            if target not in known:
                continue  # `from maskgen.x import name`: the name, not a module
            a, b = part(module), part(target)
            if a and b and a != b:
                found.add((module, a, b))
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {part(m) for m in modules()} - {None}
    assert parts <= set(LAYER_OF), f"no layer for {sorted(parts - set(LAYER_OF))}: add it to LAYERS"


def test_imports_only_go_down_the_layers():
    upward = sorted(f"{module} imports maskgen.{b}" for module, a, b in edges() if LAYER_OF[b] > LAYER_OF[a])
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_the_parts_import_each_other_without_circles():
    graph: dict[str, set[str]] = {}
    for _, a, b in edges():
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph.get(start, ()))

    circles = sorted(a for a in graph if reaches(a, a, {a}))
    assert not circles, f"import circles through {circles}: {graph}"


@pytest.mark.parametrize("library, allowed", [("typer", {"cli"}), ("click", {"cli"}), ("rich", {"cli", "bench"})])
def test_only_the_command_line_uses_typer_and_rich(library, allowed):
    users = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            named = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == library or n.startswith(library + ".") for n in named) and part(module) not in allowed:
                users.append(module)
    assert not users, f"{library} imported outside {sorted(allowed)}: {sorted(set(users))}"


def test_the_layer_test_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from maskgen.cli import app\n    import maskgen.pipeline.driver\n")
    assert imports(source) == {"maskgen.cli", "maskgen.cli.app", "maskgen.pipeline.driver"}


def test_help_loads_no_heavy_library():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from maskgen.cli import app\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        "for name in ('generate', 'mask', 'train', 'evaluate', 'video', 'run'):\n"
        "    assert CliRunner().invoke(app, [name, '--help']).exit_code == 0, name\n"
        "heavy = [m for m in ('ray', 'cv2', 'dlib', 'torch', 'numpy', 'pyarrow', 'pandas', 'PIL') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"--help imported {result.stdout.strip()}"
