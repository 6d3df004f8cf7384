"""A griffe extension that turns the reStructuredText of textloc's docstrings into Markdown.

textloc's docstrings are prose with Sphinx roles (``:func:`textloc.patch```, ``:class:`~textloc.x.Y```)
and double-backtick literals, which read well in the source and in ``help()``; mkdocstrings renders
Markdown. A role becomes inline code of its target (``~`` keeps the last name, as Sphinx shows it);
double backticks are already Markdown code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`<]*?)(?:\s*<([^`>]+)>)?`")


def markdown(text: str) -> str:
    """``text`` with its Sphinx roles as inline code."""

    def replace(match: re.Match[str]) -> str:
        short, title, target = match.groups()
        if target:  # :role:`title <target>` shows the title
            return f"`{title.strip()}`"
        return f"`{title.rsplit('.', 1)[-1] if short else title}`"

    return ROLE.sub(replace, text)


class RstRoles(griffe.Extension):
    """Rewrites every docstring loaded as Markdown (see :func:`markdown`)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
