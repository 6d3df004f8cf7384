"""The API reference: one page per public package, each name documented from its docstring by
mkdocstrings (which reads the source with griffe, importing nothing).

textloc's packages are lazy (:mod:`textloc.lazy`): a package names its public attributes and their
modules in an ``_EXPORTS`` dict and imports nothing until one is used, so a static reader does not
see those names in the package. This module reads the same ``_EXPORTS`` from the source and points
mkdocstrings at the module each name is defined in.
"""

from __future__ import annotations

import ast
from pathlib import Path

from sitegen.markdown import code, table
from sitegen.sources import Sources

#: The packages with a page, in the order of the navigation, and what each is for.
PACKAGES = {
    "textloc.engine": "Units and selectors, record and patch: everything that touches attention.",
    "textloc.localization": "Which units write the text: sweeps, screens, selection, reports.",
    "textloc.edit": "Change the words of a generated image or of your own.",
    "textloc.guard": "Keep toxic words out of images.",
    "textloc.finetune": "LoRA on the text layers only.",
}
#: Modules of names exported by ``textloc`` itself but by none of the packages above.
TOP_LEVEL_HOMES = ("textloc.pipelines", "textloc.seeding")


def pages(sources: Sources) -> dict[str, str]:
    """``reference/api/index.md`` (the ``textloc`` namespace) and ``reference/api/<package>.md``."""
    root = sources.root
    top = exports(root, "textloc")
    homes = {name: _home(root, module, name) for name, module in top.items()}
    out = {"reference/api/index.md": _index(top, homes)}
    for package, purpose in PACKAGES.items():
        names = exports(root, package)
        out[f"reference/api/{package.split('.')[-1]}.md"] = _package_page(package, purpose, {n: _home(root, m, n) for n, m in names.items()})
    return out


def exports(root: Path, package: str) -> dict[str, str]:
    """A lazy package's ``_EXPORTS`` (public name -> the module it comes from), read from its source."""
    path = root.joinpath(*package.split(".")) / "__init__.py"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "_EXPORTS":
            # A literal dict with ``**dict.fromkeys(names, module)`` entries: evaluated with only ``dict`` in scope.
            return eval(compile(ast.Expression(node.value), str(path), "eval"), {"__builtins__": {}, "dict": dict})
    return {}


def _home(root: Path, module: str, name: str) -> str:
    """The module that defines ``name``, following lazy packages' ``_EXPORTS``."""
    inner = exports(root, module) if root.joinpath(*module.split("."), "__init__.py").exists() else {}
    return _home(root, inner[name], name) if name in inner else module


def _index(top: dict[str, str], homes: dict[str, str]) -> str:
    rows = []
    for name in sorted(top):
        package = top[name]
        page = f"{package.split('.')[-1]}.md" if package in PACKAGES else ""
        where = f"[{code(package)}]({page})" if page else "this page"
        rows.append((f"[{code('tl.' + name)}][{homes[name]}.{name}]", where))
    directives = [f"::: {homes[name]}.{name}" for name in sorted(top) if top[name] in TOP_LEVEL_HOMES]
    return "\n\n".join([
        "# API reference",
        ("*Generated when the site is built, from the docstrings in the source.* `import textloc as tl` gives these "
        "names; importing textloc is cheap, each name's module is imported when it is first used."),
        table(("name", "documented in"), rows),
        "## Loading and seeding",
        *directives,
    ]) + "\n"


def _package_page(package: str, purpose: str, homes: dict[str, str]) -> str:
    by_module: dict[str, list[str]] = {}
    for name, module in homes.items():
        by_module.setdefault(module, []).append(name)
    parts = [f"# {code(package)}", f"{purpose} *Generated when the site is built, from the docstrings in the source.*"]
    for module, names in by_module.items():
        parts.append(f"## {code(module)}")
        parts += [f"::: {module}.{name}" for name in names]
    return "\n\n".join(parts) + "\n"
