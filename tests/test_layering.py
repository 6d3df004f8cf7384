"""The contract on textloc's imports: dependencies point one way, from the apps down to the engine.

Layers, lowest first; a module imports only from its own layer or a lower one, at the top of the
file or inside a function alike (a function-level import is for load time, never to dodge a cycle):

0. core: the family specs, the engine (attention units, record, patch), seeding, fingerprints, files,
   images, devices;
1. scoring: OCR, metrics, quoted text and prompt pairs;
2. registry: the named models (their loaders, settings, pairs, judges, data), the tiny random
   pipelines, the embedded models' definitions and renderer. Every use asks it (a guard for a
   model's vocabulary, ``"preset"`` for an embedded model's layers), so it sits below the uses;
3. uses: the layer resolver, localization, edit and guard, finetune;
4. apps: the CLI, the web app, the public ``textloc`` namespace, the embedded models' trainer and evaluator.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "textloc"

LAYERS: dict[str, int] = {
    "textloc.architectures": 0, "textloc.engine": 0, "textloc.seeding": 0, "textloc.fingerprint": 0, "textloc.files": 0,
    "textloc.images": 0, "textloc.distributed": 0, "textloc.pipeline_calls": 0, "textloc.settings": 0, "textloc.lazy": 0,
    "textloc.scoring": 1,
    "textloc.models": 2, "textloc.pipelines": 2, "textloc.testing": 2, "textloc.tiny": 2,
    "textloc.layers": 3, "textloc.localization": 3, "textloc.edit": 3, "textloc.guard": 3, "textloc.finetune": 3,
    "textloc": 4, "textloc.cli": 4, "textloc.__main__": 4, "textloc.app": 4,
    "textloc.tiny.train": 4, "textloc.tiny.evaluate": 4, "textloc.tiny.autoencoder": 4,
    "textloc.tiny.architectures": 4, "textloc.tiny.runs": 4, "textloc.tiny.recipe": 4,
}
NAMES = ("core", "scoring", "registry", "uses", "apps")


def _layer(module: str) -> int:
    """The layer of ``module``: that of the longest prefix :data:`LAYERS` names."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(module)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``textloc`` import in the file, wherever it sits."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("textloc")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("textloc"):
            # `from textloc.localization import stats` imports the submodule, not the package's namespace.
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((node.lineno, submodule if _is_module(submodule) else node.module))
    return sorted(set(found))


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert [_module_name(path) for path in MODULES if not _try_layer(_module_name(path))] == []


def _try_layer(module: str) -> bool:
    try:
        _layer(module)
    except KeyError:
        return False
    return True


@pytest.mark.parametrize("path", MODULES, ids=lambda path: _module_name(path))
def test_imports_point_down(path):
    here = _module_name(path)
    upward = [
        f"line {line}: {here} ({NAMES[_layer(here)]}) imports {module} ({NAMES[_layer(module)]})"
        for line, module in _imports(path)
        if _layer(module) > _layer(here)
    ]
    assert upward == []


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (module -> modules it imports), or ``[]``."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return []
        for imported in sorted(graph.get(module, ())):
            found = visit(imported, path + [module])
            if found:
                return found
        done.add(module)
        return []

    for module in sorted(graph):
        found = visit(module, [])
        if found:
            return found
    return []


def test_no_import_cycle():
    # Between modules, function-level imports included; a package's __init__ may re-export its own modules.
    graph = {
        _module_name(path): {module for _, module in _imports(path) if not module.startswith(f"{_module_name(path)}.")}
        for path in MODULES
    }
    assert " -> ".join(_cycle(graph)) == ""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself


def test_the_contract_catches_an_upward_import(tmp_path, monkeypatch):
    # The check itself: an engine module that imports a use is caught.
    fake = PACKAGE / "engine" / "units.py"
    source = tmp_path / "units.py"
    source.write_text(fake.read_text() + "\nfrom textloc.localization import localize\n")
    monkeypatch.setattr(f"{__name__}._module_name", lambda path: "textloc.engine.units")
    with pytest.raises(AssertionError, match="textloc.engine.units \\(core\\) imports textloc.localization \\(uses\\)"):
        test_imports_point_down(source)


def test_importing_textloc_is_cheap_and_its_names_load_on_first_use():
    # torch, transformers and diffusers take seconds to import; `import textloc` must not pull them.
    code = (
        "import sys, textloc as tl; heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "print(heavy, callable(tl.select_layers), tl.guard.WordDetector.__name__, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["[]", "True", "WordDetector", "True"]


@pytest.mark.parametrize("argv", [["--help"], ["localize", "--help"], ["finetune", "--help"], ["edit", "--help"], ["guard", "--help"]])
def test_the_command_lines_help_imports_no_torch_diffusers_or_transformers(argv):
    # They take seconds to import; the help (every option and default, from the configs themselves) takes none of them.
    code = (
        "import sys; from textloc.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules], file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "usage: textloc" in done.stdout and done.stderr.strip().splitlines()[-1] == "[]"
