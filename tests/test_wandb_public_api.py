"""Only W&B's public API: a wandb upgrade must not break tracking silently.

Every project source file that imports wandb is read (AST) for what breaks on an upgrade:
importing from wandb's internals (`wandb.sdk`, `wandb.util`, `wandb.errors.term`, ...), reading
or setting an underscore attribute of anything but our own objects (`self`, `cls`: W&B's
`run._log_artifact`, `table._increment_num`, `term._show_warnings`, ...), or assigning to an
attribute of the wandb module (`wandb.util.pd_available = False`).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = ("wandb", "wandb.apis.public")  # what W&B documents as its Python API
OWN = ("self", "cls")


def wandb_users() -> list[Path]:
    """Project source files (not tests, not the venv) that import wandb."""
    files = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0] in (".venv", "tests") or "site-packages" in parts:
            continue
        tree = ast.parse(path.read_text())
        if any(name == "wandb" or name.startswith("wandb.") for name in imported(tree)):
            files.append(path)
    return files


def imported(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def private_uses(source: str) -> list[str]:
    """Each use of W&B beyond its public API in `source`, as `line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in ([node.module] if isinstance(node, ast.ImportFrom) else
                         [a.name for a in node.names]):
                if name and name.startswith("wandb") and name not in PUBLIC_MODULES:
                    found.append(f"{node.lineno}: imports {name}")
            if isinstance(node, ast.ImportFrom) and node.module in PUBLIC_MODULES:
                found += [f"{node.lineno}: imports {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute):
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            if private and root_name(node.value) not in OWN:
                found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "setattr", "delattr") and len(node.args) > 1 and \
                isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_"):
            found.append(f"{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [f"{node.lineno}: assigns to {ast.unparse(t)}" for t in targets
                      if isinstance(t, ast.Attribute) and root_name(t) == "wandb"]
    return found


def test_the_project_imports_wandb_where_expected():
    users = {str(p.relative_to(ROOT)) for p in wandb_users()}
    assert {"common/tracking.py", "evaluate.py"} <= users


@pytest.mark.parametrize("path", wandb_users(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_wandb_public_api(path):
    assert private_uses(path.read_text()) == [], path


@pytest.mark.parametrize("code", [
    "table._increment_num = 3",
    "table._previous_increments_paths = []",
    "run._log_artifact(artifact, use_after_commit=True)",
    "from wandb.errors import term\nterm._show_warnings = False",
    "import wandb\nwandb.util.pd_available = False",
    "getattr(wandb.util, '_private', None)",
    "from wandb.sdk.internal import incremental_table_util",
])
def test_the_check_catches_what_tracking_once_did(code):
    assert private_uses(code), code
