"""The parser classes, and the options of a command built from its config dataclass.

Every option is declared once, as a field of a config dataclass (``deadzone.config``,
``deadzone.experiments.configs``): :func:`add_config` declares one flag per field (the fields
of a nested config, such as ``sft``, flattened), with the field's help, type and default, and
:func:`read_config` builds the config back from the parsed arguments. Nothing here imports
torch or transformers at import time: building the parser must stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import NoReturn

from deadzone.config import REPORT_TO_CHOICES  # noqa: F401 (tests/test_cli.py reads it here)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default, or "(required)", unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        if action.required and action.option_strings and "(required)" not in help:
            return f"{help} (required)"
        if "default" in help or "(required)" in help:
            return help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line, like every other deadzone error."""

    def error(self, message: str) -> NoReturn:
        if self.prog == "deadzone" and "required: COMMAND" in message:
            message = f"no command given; choose one of {', '.join(self.commands())}"
        where = "" if self.prog == "deadzone" else f"{self.prog}: "
        self.exit(2, f"deadzone: error: {where}{message} (see --help)\n")

    def commands(self) -> list[str]:
        """The names of this parser's subcommands, in the order they were added."""
        subs = (a for a in self._actions if isinstance(a, argparse._SubParsersAction))
        return [name for action in subs for name in action.choices]


def command_parser(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    config: type | None = None,
    handler: typing.Callable[[argparse.Namespace], object] | None = None,
) -> Parser:
    """The parser of the command ``name``; ``help`` is its line in ``deadzone --help`` and the
    description of its own ``--help``; with ``config``, a flag per field of that dataclass
    (:func:`add_config`); with ``handler``, the function the command runs."""
    # the line in the command list goes through %-formatting; the description does not
    line = help.replace("%", "%%")
    p = sub.add_parser(name, help=line, description=help, formatter_class=HelpFormatter)
    if config is not None:
        add_config(p, config)
    if handler is not None:
        p.set_defaults(handler=handler)
    return p


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``, empty items dropped."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


# --- options built from config dataclasses --------------------------------------------------


def add_config(p: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the dataclass ``cls`` (a nested dataclass's fields flattened: a
    field's name is its flag's, so names are unique across them), read back by
    :func:`read_config`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta, hint = f.metadata, hints[f.name]
        if meta.get("skip"):
            continue
        if dataclasses.is_dataclass(hint):
            add_config(p, hint)
            continue
        dest = f.name
        if meta.get("positional"):
            p.add_argument(dest, metavar=f.name.upper(), help=meta["help"])
            continue
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        kwargs = {"dest": dest, "help": meta["help"].replace("%", "%%")}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = meta.get("parse") or parser_of(hint)  # DeadzoneError: one line
            kwargs["metavar"] = meta.get("metavar", _metavar(flag, hint))
        if "choices" in meta:  # in the usage and the help; argparse's error lists them
            kwargs.update(choices=meta["choices"], metavar=None)
        if "listed" in meta:  # in the usage and the help; the config's error lists them
            kwargs["metavar"] = "{" + ",".join(meta["listed"]) + "}"
        if meta.get("required"):
            kwargs["required"] = True
        else:
            kwargs["default"] = shown(f.default)
        p.add_argument(flag, **kwargs)


def read_config(cls: type, args: argparse.Namespace):
    """The ``cls`` that :func:`add_config` declared, from the parsed ``args``."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("skip"):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = read_config(hints[f.name], args)
        else:
            values[f.name] = getattr(args, f.name)
    return cls(**values)


def shown(value: object) -> object:
    """A default as it is typed on the command line: a tuple comma-separated (argparse reads
    a string default through the flag's type, so the parsed default is the field's)."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return value


def parser_of(hint) -> typing.Callable[[str], object]:
    """How a flag of a field annotated ``hint`` reads its text: ``str``, ``int``, ``float``;
    ``tuple[X, ...]`` comma-separated; ``X | None`` also ``none``; ``int | float`` either."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return _items(parser_of(args[0]))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        inner = _int_or_float if set(kinds) == {int, float} else parser_of(kinds[0])
        return _or_none(inner) if type(None) in args and inner is not str else inner
    return hint


def _metavar(flag: str, hint) -> str:
    name = flag.lstrip("-").upper().replace("-", "_")
    return f"{name}[,...]" if typing.get_origin(hint) is tuple else name


def _items(item):
    def read(text: str) -> tuple:
        return tuple(item(part.strip()) for part in text.split(",") if part.strip())

    read.__name__ = f"comma-separated {item.__name__}"  # argparse's "invalid ... value"
    return read


def _or_none(inner):
    def read(text: str):
        return None if text.strip().lower() == "none" else inner(text)

    read.__name__ = inner.__name__
    return read


def _int_or_float(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


_int_or_float.__name__ = "step or fraction"
