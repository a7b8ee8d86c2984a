"""Exit statuses of the console commands (``llm-embed-train``, ``llm-embed-evaluate``, ``llm-embed-study``).

Each module's ``main(argv)`` returns its result (an output folder, results, a report) for Python
callers. A console-script wrapper passes whatever its function returns to ``sys.exit``, which
prints a non-integer to stderr and exits 1: a successful run would look failed to a shell or a job
scheduler. So ``[project.scripts]`` points at each module's ``cli()``, which runs ``main`` through
:func:`run_console` and returns an exit status:

- 0 on success;
- 1 on an error, with ``<prog>: error: <reason>`` as the last line of stderr (what a script or a
  scheduler's log shows). Errors that are the user's to fix (bad arguments, bad data, missing
  files, a missing optional package: :data:`USER_ERRORS`) print just that line, since their
  messages name the problem and the fix; anything else is a bug, so its traceback comes first;
  ``LLM_EMBED_TRACEBACK=1`` shows the traceback for every error;
- argparse's own exits (``--help``: 0, a usage error: 2) unchanged;
- 130 on Ctrl-C, as shells report a SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable

#: exceptions whose message is the whole story: raised for bad arguments, bad data, missing files
#: or a missing optional package, each with a message that names the fix
USER_ERRORS = (ValueError, TypeError, OSError, ImportError)

TRACEBACK_ENV = "LLM_EMBED_TRACEBACK"


def one_line(error: BaseException) -> str:
    """The error's message on one line (multi-line messages joined), so that it is the last line."""
    message = str(error.args[0]) if isinstance(error, KeyError) and len(error.args) == 1 else str(error)
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return message or type(error).__name__


def run_console(main: Callable[[], object], prog: str) -> int:
    """Run ``main()`` (it reads ``sys.argv``) and return the process exit status; see the module docstring."""
    try:
        main()
    except KeyboardInterrupt:
        sys.stderr.flush()
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as error:  # SystemExit (argparse, --help) is not an Exception: it passes through as is
        quiet = isinstance(error, USER_ERRORS) and os.environ.get(TRACEBACK_ENV, "") in ("", "0")
        if not quiet:
            traceback.print_exc()
        reason = one_line(error) if quiet else f"{type(error).__name__}: {one_line(error)}"
        close_progress_bars()
        sys.stdout.flush()
        print(f"{prog}: error: {reason}", file=sys.stderr, flush=True)
        return 1
    return 0


def close_progress_bars() -> None:
    """Close every open tqdm bar. A bar left open by the exception (the Trainer's, an encode loop's)
    redraws itself when it is closed or collected at exit, after the error line, which would then not
    be the last line of stderr."""
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is None:  # no bar was ever made
        return
    for bar in list(tqdm_module.tqdm._instances):
        bar.close()
    sys.stderr.flush()


# ----------------------------------------------------------------------------- config options on a command line


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``1/0`` (any case), as transformers' argument parser accepts."""
    lowered = str(text).strip().lower()
    if lowered in ("true", "yes", "y", "1", "on"):
        return True
    if lowered in ("false", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_json_object(text: str) -> dict:
    """A JSON object given on the command line (``--prompts '{"query": "Query: "}'``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")
    return value


def option_flag(name: str, dashes: bool) -> str:
    return "--" + (name.replace("_", "-") if dashes else name)


def add_config_arguments(parser: argparse.ArgumentParser, *, dashes: bool, exclude: tuple[str, ...] = ()):
    """One command-line option per :data:`~llm_embed.configuration_llm_embed.OPTIONS` entry (type,
    choices and help from there), in their own group. Options left out keep the config's default,
    which is the one shown: a value not given is not passed on (``argparse.SUPPRESS``), so derived
    defaults (``max_seq_length``, ``layer_reduction``) stay derived. ``dashes``: ``--num-latents``
    (argparse style) instead of ``--num_latents`` (transformers' ``TrainingArguments`` style)."""
    from .configuration_llm_embed import OPTIONS, RENAMED_OPTIONS

    group = parser.add_argument_group(
        "embedding model (LLMEmbeddingConfig)",
        "The design and its sizes; each is a config value saved with the model (docs/usage.md).",
    )
    old_names = {new: old for old, new in RENAMED_OPTIONS.items()}
    for option in OPTIONS:
        if option.name in exclude:
            continue
        flags = [option_flag(option.name, dashes)]
        if option.name in old_names:
            flags.append(option_flag(old_names[option.name], dashes))
        kwargs: dict = dict(dest=option.name, default=argparse.SUPPRESS,
                            help=f"{option.help} (default: {option.describe_default()})")
        if option.kind == "bool":
            kwargs.update(type=parse_bool, nargs="?", const=True, metavar="{true,false}")
        elif option.kind == "int_list":
            kwargs.update(type=int, nargs="+", metavar="LAYER")
        elif option.kind == "json":
            kwargs.update(type=parse_json_object, metavar="JSON")
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}[option.kind]
        if option.choices is not None:
            kwargs["choices"] = option.choices()
        group.add_argument(*flags, **kwargs)
    return group


def check_head_options(given: dict, *, dashes: bool) -> None:
    """Refuse a head option given explicitly (on the command line or in an arguments file) that the
    chosen head does not read (``--pooling mean --pooling_layers 1 2``), named as the user spelled it
    (:func:`~llm_embed.configuration_llm_embed.check_head_options`)."""
    from .configuration_llm_embed import check_head_options as check

    check(given, flag=lambda name: option_flag(name, dashes))


def config_kwargs(namespace: argparse.Namespace | dict) -> dict:
    """The config values given on the command line (those added by :func:`add_config_arguments`)."""
    from .configuration_llm_embed import OPTIONS

    values = vars(namespace) if isinstance(namespace, argparse.Namespace) else namespace
    return {option.name: values[option.name] for option in OPTIONS if option.name in values}


__all__ = ["add_config_arguments", "check_head_options", "config_kwargs", "run_console"]
