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
        sys.stdout.flush()
        print(f"{prog}: error: {reason}", file=sys.stderr, flush=True)
        return 1
    return 0
