"""Command-line flags generated from the config dataclasses, and configs merged from dicts.

Every setting is declared once, as a field of a config dataclass
(:mod:`lightly_grpo.chains.config`); this module turns a config tree into ``argparse`` flags
(:func:`collect_flags`, :func:`add_flags`) and turns parsed flags, JSON files and overlays back
into configs through one checked merge (:func:`merge_config`). Resolution order of a command:
dataclass defaults < the command's overlay < ``--config FILE`` < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

C = TypeVar("C")

#: A key of ``config.json`` that records facts of the finished run (sizes, timing), not settings:
#: :func:`load_config_file` skips it.
RUN_FACTS_KEY = "run"

_FIELD_COMMENT = re.compile(r"^\s*(\w+)\s*:[^#]*#\s*(.+?)\s*$")


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line argument and the config fields it sets.

    Attributes:
        name: ``"--label-fraction"``, or a positional argument's name (no dashes).
        paths: Field paths from the root config; a flag shared by sections (``--architecture``
            in the demo) sets all of them.
        type: The field's type hint.
        help: Help text.
        choices: Allowed values, or None.
        aliases: Other spellings of the flag (names of a released version).
    """

    name: str
    paths: tuple[tuple[str, ...], ...]
    type: Any
    help: str
    choices: tuple[Any, ...] | None
    aliases: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        """The ``argparse`` attribute name."""
        return self.name.lstrip("-").replace("-", "_")

    @property
    def positional(self) -> bool:
        return not self.name.startswith("-")

    @property
    def section(self) -> str:
        """The help group: the config section of the field (``"data"``), or ``""`` for the root."""
        return ".".join(self.paths[0][:-1])


def _comments(cls: type) -> dict[str, str]:
    """The comment after each field of a dataclass's source, the help of fields without one."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # Defined in a REPL or a notebook: no help text then.
        return {}
    return {m[1]: m[2] for line in source.splitlines() if (m := _FIELD_COMMENT.match(line))}


def _optional_inner(hint: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(get_args(hint)) == 2:
            return args[0]
    return None


def collect_flags(root: type, exclude: Sequence[str] = ()) -> list[Flag]:
    """The flags of a config dataclass tree, one per distinct flag name.

    Args:
        root: The command's config dataclass.
        exclude: Dotted field paths kept off the command line (e.g. ``"posttrain.checkpoint"``).

    Examples:
        >>> from lightly_grpo.chains.config import PretrainConfig
        >>> flags = {f.name: f for f in collect_flags(PretrainConfig)}
        >>> flags["--pretrain-epochs"].paths, flags["--dataset"].paths
        ((('epochs',),), (('data', 'dataset'),))
    """
    found: dict[str, Flag] = {}

    def walk(cls: type, prefix: tuple[str, ...]) -> None:
        hints = get_type_hints(cls)
        comments = _comments(cls)
        for item in dataclasses.fields(cls):
            path = (*prefix, item.name)
            hint = hints[item.name]
            if ".".join(path) in exclude:
                continue
            if dataclasses.is_dataclass(hint):
                walk(hint, path)  # type: ignore[arg-type]
                continue
            name = item.metadata.get("flag", "")
            if name is None:
                continue
            name = name or "--" + item.name.replace("_", "-")
            if name in found:
                found[name] = dataclasses.replace(found[name], paths=(*found[name].paths, path))
                continue
            found[name] = Flag(
                name=name,
                paths=(path,),
                type=hint,
                help=item.metadata.get("help") or comments.get(item.name, ""),
                choices=item.metadata.get("choices"),
                aliases=tuple(item.metadata.get("aliases", ())),
            )

    walk(root, ())
    return list(found.values())


def optional_int(value: str) -> int | None:
    """An ``int | None`` flag value: ``none`` or ``all`` mean None.

    Examples:
        >>> optional_int("all"), optional_int("12")
        (None, 12)
    """
    return None if value.lower() in ("none", "all") else int(value)


def _argparse_kwargs(flag: Flag) -> dict[str, Any]:
    hint = flag.type
    inner = _optional_inner(hint)
    kwargs: dict[str, Any] = {"help": flag.help}
    if flag.choices is not None:
        kwargs["choices"] = flag.choices
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif get_origin(hint) is list or (inner is not None and get_origin(inner) is list):
        kwargs["nargs"] = "*" if flag.positional else "+"
        element = get_args(inner if inner is not None else hint)
        if element and element[0] is not str:
            kwargs["type"] = element[0]  # e.g. list[int]: each value converted
    elif inner is int:
        kwargs["type"] = optional_int
    elif inner is not None:
        kwargs["type"] = inner
    else:
        kwargs["type"] = hint
    if flag.positional and "nargs" not in kwargs:
        kwargs["nargs"] = "?"  # a --config file may give it
    return kwargs


def get_path(config: Any, path: Sequence[str]) -> Any:
    """The value at a field path of a config tree."""
    for name in path:
        config = getattr(config, name)
    return config


def add_flags(
    parser: argparse.ArgumentParser,
    flags: Sequence[Flag],
    defaults: Any,
    titles: Mapping[str, str] | None = None,
    explicit_only: bool = False,
) -> None:
    """Adds ``flags`` to a parser, grouped by config section.

    Args:
        parser: The (sub-)parser.
        flags: From :func:`collect_flags`.
        defaults: The config whose values are the flags' defaults (shown in ``--help``).
        titles: Help-group title per section (``"" `` is the root); default: the section name.
        explicit_only: Leave absent flags out of the parsed namespace (``argparse.SUPPRESS``),
            to tell the flags a user gave from defaults.
    """
    groups: dict[str, Any] = {}
    for flag in flags:
        section = flag.section
        if section not in groups:
            title = (titles or {}).get(section, section or None)
            groups[section] = parser.add_argument_group(title) if title else parser
        default = get_path(defaults, flag.paths[0])
        kwargs = _argparse_kwargs(flag)
        kwargs["default"] = argparse.SUPPRESS if explicit_only else default
        if flag.positional:
            groups[section].add_argument(flag.dest, **kwargs)
        else:
            groups[section].add_argument(flag.name, *flag.aliases, dest=flag.dest, **kwargs)


def overrides_from_args(args: argparse.Namespace, flags: Sequence[Flag]) -> dict[str, Any]:
    """The nested override dict of the flags present in ``args`` (all paths of shared flags).

    Examples:
        >>> from lightly_grpo.chains.config import PretrainConfig
        >>> flags = collect_flags(PretrainConfig)
        >>> overrides_from_args(argparse.Namespace(pretrain_epochs=3, seed=1), flags)
        {'epochs': 3, 'data': {'seed': 1}}
    """
    overrides: dict[str, Any] = {}
    for flag in flags:
        if not hasattr(args, flag.dest):
            continue
        for path in flag.paths:
            node = overrides
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = getattr(args, flag.dest)
    return overrides


def _checked(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it has type ``hint`` (ints pass as floats and as strings), else ValueError
    naming ``where``."""
    inner = _optional_inner(hint)
    if inner is not None:
        return None if value is None else _checked(value, inner, where)
    if get_origin(hint) is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        (item,) = get_args(hint)
        return [_checked(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # e.g. "devices": 1 from a config written before devices took strings
    if hint is int and isinstance(value, bool):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ValueError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def merge_config(config: C, overrides: Mapping[str, Any], where: str = "") -> C:
    """A copy of a config dataclass with nested ``overrides`` applied, checked field by field.

    Args:
        config: A config dataclass instance (left unchanged).
        overrides: Field name -> value, or -> a dict for a nested config section.
        where: Prefix of the field names in error messages.

    Raises:
        ValueError: For an unknown field (the message lists the known ones), a value of the
            wrong type or outside the field's choices.

    Examples:
        >>> from lightly_grpo.chains.config import PosttrainConfig
        >>> merge_config(PosttrainConfig(), {"epochs": 3, "data": {"seed": 2}}).data.seed
        2
        >>> merge_config(PosttrainConfig(), {"epoch": 3})
        Traceback (most recent call last):
        ...
        ValueError: unknown setting 'epoch'; known: accuracy_reward, architecture, ...
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"expected a config dataclass instance, got {type(config).__name__}")
    if not isinstance(overrides, Mapping):
        name = where.removesuffix(".") or "the config"
        raise ValueError(f"{name} must be a JSON object, got {overrides!r}")
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = get_type_hints(type(config))
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        key = f"{where}{name}"
        if name not in fields:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(fields))}")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current):
            changes[name] = merge_config(current, value, where=f"{key}.")
            continue
        value = _checked(value, hints[name], key)
        choices = fields[name].metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
        changes[name] = value
    return dataclasses.replace(config, **changes)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a JSON config file (a run folder's ``config.json`` or ``--print-config``).

    Raises:
        FileNotFoundError: For a missing file.
        ValueError: For a file that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"config file {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(settings, dict):
        raise ValueError(f"config file {str(path)!r} must hold a JSON object")
    settings.pop(RUN_FACTS_KEY, None)
    return settings


__all__ = [
    "RUN_FACTS_KEY",
    "Flag",
    "add_flags",
    "collect_flags",
    "get_path",
    "load_config_file",
    "merge_config",
    "optional_int",
    "overrides_from_args",
]
