"""The command-line reference, from ``textloc.cli.build_parser()``: the parser ``textloc`` itself runs,
so the page lists exactly the options, defaults and examples ``--help`` prints."""

from __future__ import annotations

import argparse

from sitegen.markdown import code, escape, table
from sitegen.sources import Sources
from textloc.cli import PROG, build_parser


def pages(sources: Sources) -> dict[str, str]:
    """``reference/cli.md``."""
    parser = build_parser()
    parts = ["# Command-line reference", ("*Generated when the site is built, from the parser of `textloc.cli`; "
             "`textloc COMMAND --help` prints the same.* The overview: [Command line](../cli.md)."),
             _command(parser, PROG, level=2)]
    for name, subparser in _subcommands(parser).items():
        parts.append(_command(subparser, f"{PROG} {name}", level=2))
    return {"reference/cli.md": "\n\n".join(parts) + "\n"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each subcommand's one-line help, as ``textloc --help`` lists it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {}


def _command(parser: argparse.ArgumentParser, name: str, level: int) -> str:
    """A command's section: its description, usage, options by group and examples."""
    formatter = parser._get_formatter()
    usage = formatter._format_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, "").strip()
    parts = [f"{'#' * level} {code(name)}"]
    if parser.description:
        parts.append(escape(" ".join(parser.description.split())))
    parts.append(f"```text\n{usage}\n```")
    for group in parser._action_groups:
        rows = [_row(formatter, action) for action in group._group_actions
                if action.help is not argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction)]
        if rows:
            parts.append(f"**{group.title}**\n\n" + table(("argument", "default", "what it does"), rows))
    summaries = _summaries(parser)
    if summaries:
        rows = [(f"[{code(command)}](#{_anchor(f'{name} {command}')})", escape(summary)) for command, summary in summaries.items()]
        parts.append("**commands**\n\n" + table(("command", "what it does"), rows))
    if parser.epilog:
        examples = parser.epilog.removeprefix("examples:").strip("\n")
        parts.append("**examples**\n\n```bash\n" + "\n".join(line.strip() for line in examples.splitlines()) + "\n```")
    return "\n\n".join(parts)


def _row(formatter: argparse.HelpFormatter, action: argparse.Action) -> tuple[str, str, str]:
    metavar = "" if action.nargs == 0 else " " + formatter._format_args(action, action.dest.upper())
    names = ", ".join(code(option + metavar) for option in action.option_strings) or code(metavar.strip())
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else code(str(default))
    return names, shown, escape(" ".join(formatter._expand_help(action).split())) if action.help else ""


def _anchor(heading: str) -> str:
    """The anchor MkDocs gives a heading ``textloc edit``."""
    return heading.replace(" ", "-")
