"""The examples page: each script of ``examples/``, its docstring as prose and its code as written."""

from __future__ import annotations

import ast

from sitegen.markdown import code
from sitegen.sources import Sources

#: The order the page shows the scripts in (the one the uses are told in); others follow by name.
ORDER = ("localize", "edit", "edit_image", "guard", "finetune", "engine")


def pages(sources: Sources) -> dict[str, str]:
    """``examples.md``."""
    scripts = sources.glob("examples/*.py")
    rank = {name: i for i, name in enumerate(ORDER)}
    scripts.sort(key=lambda path: (rank.get(path.rsplit("/", 1)[-1][:-3], len(ORDER)), path))
    parts = [
        "# Examples",
        ("*Generated when the site is built, from the scripts in `examples/`.* One short script per use, each on "
        "the embedded model `textloc-tiny` with settings small enough to finish in seconds on one CPU thread (the "
        "test suite runs them all: `tests/test_examples.py`). Each runs from any folder and writes into the folder "
        "given on its command line, by default `runs/examples/<name>`."),
    ]
    for path in scripts:
        text = (sources.root / path).read_text()
        docstring = ast.get_docstring(ast.parse(text)) or ""
        title, _, rest = docstring.partition("\n\n")
        body = _without_docstring(text)
        parts += [f"## {code(path)}", title, rest.strip(), f"```bash\npython {path} [OUT]\n```", f"```python\n{body.strip()}\n```"]
    return {"examples.md": "\n\n".join(part for part in parts if part) + "\n"}


def _without_docstring(text: str) -> str:
    """The script's code after its module docstring (which the page shows as prose)."""
    module = ast.parse(text)
    first = module.body[0] if module.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return "\n".join(text.splitlines()[first.end_lineno:])
    return text
