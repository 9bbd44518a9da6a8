"""The help screens, tidied after Typer has built the commands.

Typer shows each value's Python type (``<str>``, ``<list[str]>``, ``<int range> [x>=1]``) and
spells arguments ``{file}`` and ``{MODEL}...`` on the usage line; the help here shows one metavar
per value instead (an argument's name in capitals, an option's declared metavar or one for its
kind), lists ``--debug`` under every command (``main`` accepts it anywhere on the line) and gives
each command's description whole paragraphs, wrapped to the terminal (not at the docstring's
line breaks).
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

# An option's metavar when it declares none, by the kind of value it takes.
_KIND_METAVARS: dict[type, str] = {int: "N", float: "X", Path: "PATH", str: "TEXT"}


def tidy_help(command: Any) -> None:
    """Tidy the help of ``command`` (the root group) and of each of its subcommands."""
    debug = next(param for param in command.params if param.name == "debug")
    _tidy_params(command)
    for sub in getattr(command, "commands", {}).values():
        listed = copy.copy(debug)
        listed.expose_value = False  # parsed by the root: main() moves --debug before the command
        sub.params.append(listed)
        _tidy_params(sub)
        paragraphs = _paragraphs(sub.help or "")
        # Typer keeps a docstring's line breaks: joined, each paragraph wraps to the terminal.
        sub.help = "\n\n".join(paragraphs)
        sub.short_help = paragraphs[0] if paragraphs else ""


def _paragraphs(text: str) -> list[str]:
    return [" ".join(part.split()) for part in inspect.cleandoc(text).split("\n\n")]


def _tidy_params(command: Any) -> None:
    params = list(command.params)
    help_option = command.get_help_option(command.context_class(command, info_name=command.name))
    if help_option is not None:
        params.append(help_option)
    for param in params:
        if getattr(param, "is_flag", False) or param.name == "help":
            metavar = ""
        elif param.param_type_name == "argument":
            metavar = (param.metavar or param.name).upper()
        else:
            metavar = param.metavar or _kind_metavar(param)
        param.metavar = metavar
        # Instance attributes, read before the class's methods (Typer's rich help calls these).
        param.display_type_rich = lambda ctx, shown=metavar, param=param: (
            None if param.param_type_name == "argument" else shown or None
        )
        param._get_number_range_help_str = lambda: None
        if param.param_type_name == "argument":
            param._usage_display_name = lambda shown=metavar, param=param: _usage_name(shown, param)
            param._rich_display_name = lambda shown=metavar, param=param: (
                shown + ("..." if param.nargs != 1 else "")
            )


def _usage_name(metavar: str, param: Any) -> str:
    name = metavar + ("..." if param.nargs != 1 else "")
    return name if param.required else f"[{name}]"


def _kind_metavar(param: Any) -> str:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return _KIND_METAVARS.get(annotation, "TEXT") if isinstance(annotation, type) else "TEXT"
