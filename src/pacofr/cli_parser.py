"""The one parser family of every ``pacofr`` and ``pacofr-prep`` command, and its one error path.

Bad input (an unknown option, a misspelt key, a wrong type, a missing file, a key the YAML config may not hold)
ends a command with exactly one line on stderr, ``<prog>: error: <what is wrong>``, and exit code 2, before
anything is built or written. A misspelling names the nearest valid option (:func:`nearest_option`: the last
key component first, so ``--model.mask_ration`` finds ``--data.masker.init_args.mask_ratio``), and a key that
moved (:data:`MOVED_KEYS`) names its new place.

- :class:`OneLineArgumentParser`: the ``argparse`` parser of ``pacofr eval|export|checkpoint|study`` and of
  ``pacofr-prep``; its subcommands' parsers are the same class.
- :class:`OneLineErrorParser`: the ``jsonargparse`` parser (LightningCLI's) of ``pacofr fit|validate`` and
  of ``pacofr eval``'s task options, which read the YAML configs; its errors go through the same line.
  Defined on first use, so that ``pacofr-prep`` and the argparse commands start without importing Lightning.
- :func:`refuse_moved_keys`: the moved keys, checked against the command line and the ``--config`` YAML files
  before jsonargparse reads them.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pacofr.errors import EXIT_USER_ERROR

# old dotted key -> (new dotted key, why it moved); `pacofr fit|validate` refuse the old key in one line
MOVED_KEYS: dict[str, tuple[str, str]] = {
    "model.codebook_warmup_steps": ("model.objective.init_args.codebook_warmup_steps", "PaCo-FR's own setting"),
    "model.codebook_lr_scale": ("model.objective.init_args.codebook_lr_scale", "PaCo-FR's own setting"),
}

SIMILARITY_CUTOFF = 0.75


def exit_with_error(prog: str, message: str) -> NoReturn:
    """The one error line: ``<prog>: error: <message>`` on stderr (whitespace folded to one line), exit 2."""
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    sys.exit(EXIT_USER_ERROR)


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def nearest_option(name: str, known: Iterable[str], cutoff: float = SIMILARITY_CUTOFF) -> str | None:
    """The entry of ``known`` that ``name`` most likely misspells, or None.

    Ranked by the last dotted component first (``mask_ration`` ~ ``mask_ratio``, wherever that key lives:
    ``--model.mask_ration`` -> ``--data.masker.init_args.mask_ratio``), then by the whole dotted path (which of
    several ``patch_size`` keys); when no last component is close, by the whole path alone. Leading dashes and
    a ``=value`` are ignored on both sides; the entry is returned as ``known`` spells it."""
    bare = name.split("=", 1)[0].lstrip("-")
    last = bare.rsplit(".", 1)[-1]
    by_last: tuple[float, float] | None = None
    by_full: float | None = None
    best_last = best_full = None
    for option in known:
        key = option.lstrip("-")
        if key == bare:
            return None  # not a misspelling
        score = (_similarity(last, key.rsplit(".", 1)[-1]), _similarity(bare, key))
        if score[0] >= cutoff and (by_last is None or score > by_last):
            by_last, best_last = score, option
        if score[1] >= cutoff and (by_full is None or score[1] > by_full):
            by_full, best_full = score[1], option
    return best_last if best_last is not None else best_full


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the nearest known option, or the empty string."""
    close = nearest_option(name, known)
    return f" (did you mean {close}?)" if close else ""


def moved_message(key: str, moved: Mapping[str, tuple[str, str]] = MOVED_KEYS) -> str | None:
    """``<old> moved to <new> (<why>)`` when dotted ``key`` is a moved key (None otherwise)."""
    if key not in moved:
        return None
    new, why = moved[key]
    return f"{key} moved to {new}" + (f" ({why})" if why else "")


# --- argparse ------------------------------------------------------------------------------------


def option_strings(parser: Any) -> list[str]:
    """Every ``--long.option`` an argparse or jsonargparse parser knows, its subcommands' too."""
    found = []
    for action in parser._actions:
        found += [s for s in action.option_strings if s.startswith("--")]
        for sub in getattr(action, "_name_parser_map", {}).values():  # subcommands
            found += option_strings(sub)
    return sorted(set(found))


def _suggestion_for(message: str, known: Sequence[str]) -> str:
    """The hint for an argparse message: the nearest option to the first unknown ``--option``, or the nearest
    choice to an invalid one."""
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        return did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
    for word in re.findall(r"--[\w.\-]+", message):
        if word not in known:
            moved = moved_message(word[2:])
            return f" ({moved})" if moved else did_you_mean(word, known)
    return ""


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are the one line (with the nearest option of the subcommand
    that was given, when one was misspelt) and exit code 2. Subcommand parsers made with ``add_subparsers``
    are of the same class; an unrecognised option is reported by the deepest subcommand given."""

    def error(self, message: str) -> NoReturn:
        known = option_strings(self)
        hint = _suggestion_for(message, known)
        if not hint:  # e.g. "required: --out" because --ot was given: name the misspelling too
            given = getattr(self, "_pacofr_args", None) or []
            misspelt = [a.split("=", 1)[0] for a in given if a.startswith("--") and a.split("=", 1)[0] not in known]
            close = nearest_option(misspelt[0], known) if misspelt else None
            hint = f" ({misspelt[0]}: did you mean {close}?)" if close else ""
        exit_with_error(self.prog, f"{message}{hint} ({self.prog} --help)")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._pacofr_args = list(sys.argv[1:] if args is None else args)  # what error() looks for misspellings in
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._chosen_subparser(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _chosen_subparser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
                if isinstance(chosen, OneLineArgumentParser):
                    return chosen._chosen_subparser(parsed)
        return self


# --- the YAML configs and the command line of jsonargparse -----------------------------------------


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        flat.update(_flatten(value, dotted) if isinstance(value, dict) and value else {dotted: value})
    return flat


def config_files(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``(group, path)`` of every YAML file the command line hands jsonargparse, in order: ``--config FILE``
    (group ``""``) and ``--<group> FILE.yaml``."""
    found = []
    for i, arg in enumerate(argv):
        name, value = (arg.split("=", 1) + [None])[:2] if arg.startswith("--") else (arg, None)
        if value is None and arg.startswith("--") and i + 1 < len(argv):
            value = argv[i + 1]
        if not arg.startswith("--") or value is None:
            continue
        if name in ("--config", "-c"):
            found.append(("", value))
        elif value.endswith((".yaml", ".yml")) and Path(value).is_file():
            found.append((name[2:], value))
    return found


def read_config_keys(argv: Sequence[str]) -> list[tuple[str, Any, str]]:
    """``(dotted key, value, file)`` of every leaf of the YAML files given on the command line (a file that
    does not exist or does not parse is left to jsonargparse, which says so)."""
    import yaml

    found = []
    for group, path in config_files(argv):
        try:
            tree = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        for key, value in _flatten(tree, group).items():
            found.append((key, value, path))
    return found


def command_line_keys(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """``(dotted key, value)`` of every ``--key value`` / ``--key=value`` on the command line."""
    found = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg == "--":
            continue
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        else:
            key = arg[2:]
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
        found.append((key, value))
    return found


def refuse_moved_keys(prog: str, argv: Sequence[str], moved: Mapping[str, tuple[str, str]] = MOVED_KEYS) -> None:
    """One line and exit 2 when the command line or a YAML file given with ``--config`` uses a moved key."""
    for key, _ in command_line_keys(argv):
        message = moved_message(key, moved)
        if message:
            exit_with_error(prog, message)
    for key, _, path in read_config_keys(argv):
        message = moved_message(key, moved)
        if message:
            exit_with_error(prog, f"{message}; {path} still sets {key}")


# --- jsonargparse: every key a parser accepts ------------------------------------------------------


def _import_class(class_path: Any) -> type | None:
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # a misspelt class_path is jsonargparse's to report
        return None


def _is_subclass_action(action: Any) -> bool:
    try:
        from jsonargparse._typehints import ActionTypeHint
    except ImportError:  # pragma: no cover - a jsonargparse without that module: no nested keys
        return False
    return isinstance(action, ActionTypeHint) and ActionTypeHint.is_subclass_typehint(action, all_subtypes=False)


def _class_path_of(dest: str, default: Any, values: Mapping[str, Any]) -> str | None:
    """The class a subclass-typed key resolves to: the command line's, else the YAML files', else the default."""
    for key in (f"{dest}.class_path", dest):
        value = values.get(key)
        if isinstance(value, str) and not value.lstrip().startswith(("{", "[")):
            return value
    if isinstance(default, Mapping) or hasattr(default, "class_path"):
        class_path = default.get("class_path") if isinstance(default, Mapping) else default.class_path
        return class_path if isinstance(class_path, str) else None
    return None


def parser_keys(parser: Any, values: Mapping[str, Any], prefix: str = "", depth: int = 0) -> list[str]:
    """Every ``--dotted.key`` a jsonargparse parser accepts, the init args of its class-typed keys included
    (``--data.masker.init_args.mask_ratio``) for the class the command line or the YAML files name there.
    Keys that are targets of links are left out: the link sets them."""
    import jsonargparse

    keys = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or getattr(action, "_pacofr_skip", False):
            continue
        if type(action).__name__ == "ActionLink":
            continue
        keys += [f"--{prefix}{s[2:]}" for s in action.option_strings if s.startswith("--")]
        if depth >= 3 or not _is_subclass_action(action):
            continue
        dest = f"{prefix}{action.dest}"
        cls = _import_class(_class_path_of(dest, action.default, values))
        if cls is None:
            continue
        linked = set(getattr(action, "sub_add_kwargs", {}).get("linked_targets", ()))
        try:
            inner = jsonargparse.ArgumentParser(exit_on_error=False)
            inner.add_class_arguments(cls, skip=linked, fail_untyped=False)
        except Exception:  # an unusual signature: its keys are simply not offered
            continue
        keys += [
            k
            for k in parser_keys(inner, values, f"{dest}.init_args.", depth + 1)
            if k.rsplit(".", 1)[-1] not in ("help", "config", "print_config")
        ]
    return sorted(set(keys))


# --- jsonargparse: its messages as the one line ----------------------------------------------------

_TYPE = re.compile(r"Expected a <class '([\w.]+)'>\.? Got value: (.*?)(?= - |$)")
_OPTION_NOT_ACCEPTED = re.compile(r"Option '([\w.\-]+)' is not accepted")
_CLASS_PROBLEM = re.compile(r"Problem with given class_path '([\w.]+)': (.*?)(?= - Expected a <class 'NoneType'>|$)")
_PARSER_KEY = re.compile(r'^Parser key "([\w.\-]+)":\s*(.*)$')
_NOT_ACCEPT = re.compile(r"does not accept (?:option|nested key)s? '([\w.\-]+)'")
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (.*)$")


def _typed(text: str) -> str:
    """``Expected a <class 'int'>. Got value: abc`` -> ``expected int, got 'abc'``."""
    match = _TYPE.search(text)
    return f"expected {match.group(1)}, got {match.group(2).strip()!r}" if match else text


class _Keys:
    """What the error line needs to know about the command: the options the parser accepts, the command
    line's keys and the YAML files' keys (to say where a bad key came from)."""

    def __init__(self, parser: Any, argv: Sequence[str]):
        self.argv = list(argv)
        self.yaml = read_config_keys(self.argv)
        self.cli = command_line_keys(self.argv)
        values = {k: v for k, v, _ in self.yaml}
        values.update({k: v for k, v in self.cli if v is not None})
        try:
            self.known = parser_keys(parser, values)
        except Exception:  # the suggestion is a courtesy: never let it hide the error itself
            self.known = option_strings(parser)

    def source(self, key: str) -> str | None:
        """The YAML file that sets ``key`` when the command line does not."""

        def same(k: str) -> bool:  # jsonargparse takes ``--a.b.key`` for ``--a.b.init_args.key``
            return k.replace(".init_args.", ".") == key.replace(".init_args.", ".")

        if any(same(k) for k, _ in self.cli):
            return None
        return next((path for k, _, path in reversed(self.yaml) if same(k)), None)

    def unknown(self, key: str, what: str) -> str:
        moved = moved_message(key)
        if moved:
            return moved
        path = self.source(key)
        if path is not None:
            close = nearest_option(key, [k[2:] for k in self.known])
            return f"{what} {key} in {path}" + (f" (did you mean {close}?)" if close else "")
        return f"{what} --{key}{did_you_mean('--' + key, self.known)}"


def jsonargparse_message(message: str, parser: Any, argv: Sequence[str]) -> str:
    """jsonargparse's error as the one line's text: the key at fault by its full dotted name, the file that
    set it, and the nearest valid key when it is misspelt."""
    text = " ".join(message.split())
    keys = _Keys(parser, argv)
    unrecognized = _UNRECOGNIZED.match(text)
    if unrecognized:
        words = unrecognized.group(1).split()
        first = next((w for w in words if w.startswith("--")), None)
        if first is None:
            return text
        key = first.split("=", 1)[0][2:]
        moved = moved_message(key)
        return moved if moved else f"{text}{did_you_mean(first, keys.known)}"
    not_accepted = _NOT_ACCEPT.search(text)
    if not_accepted:
        return keys.unknown(not_accepted.group(1), "unknown key")
    parser_key = _PARSER_KEY.match(text)
    if not parser_key:
        return text
    dest, detail = parser_key.groups()
    problem = _CLASS_PROBLEM.search(detail)
    if problem:
        class_path, inner = problem.group(1), problem.group(2).strip()
        option = _OPTION_NOT_ACCEPTED.search(inner)
        if option:
            return keys.unknown(f"{dest}.init_args.{option.group(1)}", f"{class_path} has no option")
        inner_key = _PARSER_KEY.match(inner)
        if inner_key:
            return f"--{dest}.init_args.{inner_key.group(1)}: {_typed(inner_key.group(2))}"
        return f"--{dest} ({class_path}): {_typed(inner)}"
    return f"--{dest}: {_typed(detail)}"


def _lightning_parser_class() -> type:
    from lightning.pytorch.cli import LightningArgumentParser

    class OneLineErrorParser(LightningArgumentParser):
        """LightningCLI's parser with the family's error path: one line, the nearest key, exit 2."""

        def parse_args(self, args=None, *rest, **kwargs):  # type: ignore[override]
            if args is not None and not getattr(self, "_inner_parser", False):
                self._pacofr_argv = list(args)  # what error() reads the YAML files and class paths from
            return super().parse_args(args, *rest, **kwargs)

        def error(self, message: str, ex: Exception | None = None) -> NoReturn:
            if not self.exit_on_error:  # jsonargparse probing alternatives: keep raising
                super().error(message, ex)
            parser = getattr(ex, "subcommand_parser", None) or self
            prog = " ".join(["pacofr", *parser.prog.replace(" [options]", "").split()[1:]])  # argv[0] may be python
            argv = getattr(self, "_pacofr_argv", None)
            argv = sys.argv[1:] if argv is None else argv
            exit_with_error(prog, f"{jsonargparse_message(message, parser, argv)} ({prog} --help)")

    OneLineErrorParser.__module__ = __name__
    OneLineErrorParser.__qualname__ = "OneLineErrorParser"
    return OneLineErrorParser


_lazy: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "OneLineErrorParser":  # built on first use: importing Lightning costs seconds
        if name not in _lazy:
            _lazy[name] = _lightning_parser_class()
        return _lazy[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
