"""The command line's own parser: an unknown option is reported on one line that names the nearest
valid option and, for a key in a config file, the file; other parse errors drop argparse's
hundred-line usage dump for the message and a pointer to ``--help``.

Setting ``JSONARGPARSE_DEBUG=1`` keeps jsonargparse's own behaviour (it raises instead of exiting).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

# jsonargparse's wordings for a key no parser knows (its _core.check_values and parse_args).
_UNKNOWN_KEY = (
    re.compile(r"^Subcommand '(?P<sub>[^']+)' does not accept option '(?P<key>[^']+)'$"),
    re.compile(r"^Group '(?P<group>[^']+)' does not accept option '(?P<key>[^']+)'$"),
    re.compile(r"^Option '(?P<key>[^']+)' is not accepted before subcommand"),
)
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (?P<args>.*)$", re.S)
_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<value>[^']*)' \(choose from (?P<choices>[^)]*)\)")


def program_name(argv0: str) -> str:
    """The name to show in usage lines: ``python -m grpo_lightning`` when run so, else the command."""
    return "python -m grpo_lightning" if argv0.endswith("__main__.py") else "grpo-lightning"


def known_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--long.option`` of ``parser`` (a subcommand's parser holds the model.*, data.* ones)."""
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (difflib's ratio, at least 0.6), or None."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def flat_keys(tree: Any, prefix: str = "") -> set[str]:
    """The dotted keys of a nested mapping: ``{"model": {"beta": 0}}`` gives ``{"model", "model.beta"}``."""
    if not isinstance(tree, dict):
        return set()
    keys = set()
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys |= {dotted} | flat_keys(value, dotted + ".")
    return keys


def config_files(args: Sequence[str]) -> list[str]:
    """The files given with ``-c``/``--config`` in ``args``, in order."""
    files = []
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        elif arg in ("-c", "--config") and i + 1 < len(args):
            files.append(args[i + 1])
    return files


def file_with_key(files: Sequence[str], key: str) -> str | None:
    """The last of ``files`` that sets the dotted ``key`` (the one whose value would have won)."""
    found = None
    for path in files:
        try:
            with open(path) as f:
                tree = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue  # jsonargparse reports an unreadable file itself
        if key in flat_keys(tree):
            found = path
    return found


def unknown_key_message(key: str, options: Sequence[str], args: Sequence[str]) -> str:
    """One line for a dotted ``key`` no parser accepts: where it came from and the nearest valid one.

    ``key`` has no leading dashes and may carry a subcommand prefix (``fit.model.x`` is ``model.x``).
    """
    names = [o[2:] for o in options]
    source = file_with_key(config_files(args), key)
    near = nearest(key, names)
    hint = f" (did you mean {'--' if source is None else ''}{near}?)" if near else ""
    if source is not None:
        return f"{source}: unknown key {key}{hint}"
    return f"unknown option --{key}{hint}"


def _strip_subcommand(key: str, subcommands: Iterable[str]) -> str:
    head, _, rest = key.partition(".")
    return rest if rest and head in subcommands else key


def rewrite_error(message: str, parser: argparse.ArgumentParser, args: Sequence[str]) -> str:
    """The message for the user: one line per unknown option or key, with the nearest valid one;
    a mistyped subcommand gets the nearest subcommand; any other message is returned as is."""
    subcommands = parser._subcommands_action.choices if getattr(parser, "_subcommands_action", None) else {}
    options = known_options(parser) + [o for p in subcommands.values() for o in known_options(p)]
    for pattern in _UNKNOWN_KEY:
        match = pattern.match(message)
        if match:
            key = match["key"]
            if match.groupdict().get("group"):
                key = f"{match['group']}.{key}"
            return unknown_key_message(_strip_subcommand(key, subcommands), options, args)
    match = _UNRECOGNIZED.match(message)
    if match:
        unknown = [a.split("=", 1)[0] for a in match["args"].split() if a.startswith("-")]
        if unknown:
            lines = [unknown_key_message(a.lstrip("-"), options, args) for a in unknown]
            return "\n".join(dict.fromkeys(lines))
    match = _INVALID_CHOICE.search(message)
    if match:
        choices = re.findall(r"'([^']*)'", match["choices"])
        near = nearest(match["value"], choices)
        if near:
            return f"{message} (did you mean {near}?)"
    return message


class GRPOArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are short: ``error: <one line>`` and the ``--help`` to read."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        from jsonargparse._common import debug_mode_active  # its switch for raising instead of exiting

        if not self.exit_on_error or debug_mode_active():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        args = getattr(self, "args", None) or sys.argv[1:]
        text = rewrite_error(message, parser, args)
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {text}\n({prog} --help lists every option.)\n")
        self.exit(2)

