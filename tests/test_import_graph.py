"""Dependencies point one way: layers and networks know nothing of the inference engine, and the
engine imports nothing of the models at runtime (it works on what the layers expose); CVVAE,
in models/autoencoder.py, ties the two together."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cvvae"


def _runtime_imports(path: Path) -> set[str]:
    """Modules ``path`` imports outside ``if TYPE_CHECKING:`` blocks, as absolute names."""
    tree = ast.parse(path.read_text())
    package = ".".join(("cvvae",) + path.relative_to(PACKAGE).parent.parts)
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
    return names


def test_layers_and_networks_know_nothing_of_the_engine():
    for name in ("convs", "layers", "networks"):
        imports = _runtime_imports(PACKAGE / "models" / f"{name}.py")
        assert not any(module.startswith("cvvae.inference") for module in imports), (name, imports)


def test_the_engine_imports_nothing_of_the_models_at_runtime():
    for path in (PACKAGE / "inference").glob("*.py"):
        imports = _runtime_imports(path)
        assert not any(module.startswith("cvvae.models") for module in imports), (path, imports)


def test_engine_files_and_functions_stay_small():
    """A reader holds each file in one sitting: at most ~300 lines, function bodies (after the
    signature and docstring) at most 60."""
    for folder in ("inference", "models", "pipelines"):
        for path in (PACKAGE / folder).glob("*.py"):
            text = path.read_text()
            assert text.count("\n") <= 320, path
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef):
                    body = node.body[1:] if ast.get_docstring(node) else node.body
                    assert node.end_lineno - body[0].lineno < 60, (path, node.name)
