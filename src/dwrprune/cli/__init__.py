"""The ``dwrprune`` command line: it parses arguments and calls the library, nothing more.

Each subcommand is a small function registered with :func:`~.options.command` (in
:mod:`.commands` and :mod:`.pipeline`).  Every option can also come from a YAML file
(``--config FILE``; keys are option names with dashes or underscores); options given on the
command line win.  Every mistake ends with one line, ``dwrprune: error: ...``, and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from ..errors import DwrpruneError
from . import commands, pipeline  # noqa: F401  (registers the subcommands)
from .options import _COMMANDS, Parser, add_progress_arg, prepare_model


# ---------------------------------------------------------------------------- entry point
def build_parser(yaml_values: dict | None = None, for_command: str | None = None) -> Parser:
    """The parser; ``yaml_values`` become defaults of ``for_command`` (the command line
    still wins)."""
    parser = Parser(prog="dwrprune",
                    description="Prune a CNN along depth, width and resolution.")
    parser.add_argument("--version", action="version", version=f"dwrprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (fn, add, help_, _) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", default=None, help="YAML file of option values")
        if name != for_command:
            continue  # only the command being run gets its options (some import torch)
        add(sp)
        if "--progress" not in sp._option_string_actions:  # noqa: SLF001 - every command has it
            add_progress_arg(sp)
        sp.set_defaults(func=fn)
        if name == for_command and yaml_values:
            if ":" in str(yaml_values.get("model", "")):
                raise DwrpruneError("config file: a model of your own (package.module:factory) "
                                    "imports code, so it is taken from the command line only: "
                                    "give --model there")
            known = {a.dest: a for a in sp._actions}  # noqa: SLF001 - read-only look-up
            unknown = sorted(set(yaml_values) - set(known))
            if unknown:
                raise DwrpruneError(f"config file: unknown options {unknown} for "
                                    f"'dwrprune {name}'")
            sp.set_defaults(**{k: _yaml_value(known[k], k, v) for k, v in yaml_values.items()})
    return parser


def _yaml_value(action, key: str, value):
    """A YAML value for an option: strings go through the option's own parser (argparse
    converts string defaults); lists only where the option takes a list."""
    if isinstance(value, (list, dict)) or value is None or isinstance(value, bool):
        if isinstance(value, bool) and action.type not in (None, str) and action.nargs != 0:
            raise DwrpruneError(f"config file: option {key} expects a value, got {value}")
        return value
    return str(value) if action.type is not None else value


def _pre_parse(argv: list[str]) -> tuple[str | None, str | None]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("command", nargs="?")
    known, _ = pre.parse_known_args(argv)
    return known.command, known.config


def parse(argv: list[str]) -> argparse.Namespace:
    from ..pipeline import read_options_file

    name, path = _pre_parse(argv)
    values = read_options_file(path) if path and name in _COMMANDS else None
    args = build_parser(values, name).parse_args(argv)
    missing = [o for o in _COMMANDS[args.command][3] if getattr(args, o, None) is None]
    if missing:
        raise DwrpruneError(f"dwrprune {args.command} needs "
                            f"{', '.join('--' + o.replace('_', '-') for o in missing)}")
    return args


def one_line(e: DwrpruneError) -> str:
    """The message as one line (an error re-raised from a DataLoader worker carries the
    worker's traceback: keep only the message itself)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if len(lines) > 1 and any("Traceback" in ln for ln in lines):
        last = lines[-1]
        return last.split("DwrpruneError: ", 1)[-1]
    return " ".join(lines)


DISTRIBUTED_COMMANDS = ("train", "finetune", "eval")


def system_failure(e: BaseException) -> str | None:
    """One line for a failure of the machine rather than of dwrprune (a full disk, a
    permission, a file that vanished), found anywhere in the chain of ``e``; None for
    anything else (a bug, which keeps its traceback)."""
    import errno

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            return f"{e.strerror or errno.errorcode.get(e.errno, e.errno)}{where}"
        text = str(e)
        if type(e).__module__ == "sqlite3" and ("disk" in text or "readonly" in text or
                                                "locked" in text):
            return f"the sample store: {text}"
        if isinstance(e, RuntimeError) and ("file write failed" in text or
                                            "No space left" in text):
            return f"cannot write a file ({text.splitlines()[0][:120]}); is the disk full?"
        e = e.__cause__ or e.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # answered before the parser imports the library
        print(f"dwrprune {__version__}")
        return 0
    distributed = None
    try:
        args = parse(argv)  # --help answers here, before torch is imported
        from ..training import distributed

        if distributed.launched():
            if args.command not in DISTRIBUTED_COMMANDS:
                raise DwrpruneError(
                    f"`dwrprune {args.command}` does not run under torchrun; data-parallel "
                    f"commands: {', '.join(DISTRIBUTED_COMMANDS)} (sample collection spreads "
                    "over machines with --executor ray instead)")
            distributed.init()
        prepare_model(args)
        code = int(args.func(args) or 0)
        distributed.shutdown()  # a no-op unless this process joined torchrun's group
        return code
    except DwrpruneError as e:
        print(f"dwrprune: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dwrprune: interrupted; finished work is saved", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - only the machine's own failures are caught
        line = system_failure(e)
        if line is None:
            raise
        print(f"dwrprune: error: {line}; finished work is saved, run the same command again "
              "once that is fixed", file=sys.stderr)
        return 2
    finally:
        if distributed is not None:
            distributed.shutdown(wait=False)  # after an error: leave without waiting


if __name__ == "__main__":
    sys.exit(main())
