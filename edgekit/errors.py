"""The one exception type for problems the user can fix (bad input, missing files, wrong options), and the exit
statuses of the `edgekit` command, defined here once.

The CLI turns an EdgekitError into one line on stderr and exits with its `exit_code` (1 unless a subclass says
otherwise); anything else is a bug and shows a traceback.
"""

from typing import Dict

# Exit statuses (shell conventions: 2 for usage errors as argparse gives them, 128 + N for "ended by signal N").
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SOURCE_FAILED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

EXIT_CODES: Dict[int, str] = {
    EXIT_OK: "done",
    EXIT_ERROR: "error (bad input, missing file, a failing stage)",
    EXIT_USAGE: "usage error (bad option or argument)",
    EXIT_SOURCE_FAILED: "the video source failed: a camera or stream could not be opened, a live source (or the "
                        "Triton server of a triton:// model) was lost and every reconnect attempt failed, or a file "
                        "ended before the frames its header announces",
    EXIT_INTERRUPTED: "interrupted by Ctrl-C (SIGINT)",
    EXIT_TERMINATED: "terminated by SIGTERM",
}


class EdgekitError(Exception):
    """A user-facing error: the message names the file or option and the problem."""

    exit_code = EXIT_ERROR


class SourceFailed(EdgekitError):
    """The video source failed: it could not be opened (camera, CSI, RTSP), a live source was lost and its
    reconnect attempts are exhausted, or a file ended before the frames its header announces."""

    exit_code = EXIT_SOURCE_FAILED


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread (the CLI's handler) so that every `finally` and `except BaseException`
    runs: temporary files and folders beside the outputs are removed as on Ctrl-C."""

    exit_code = EXIT_TERMINATED


class MissingDependency(EdgekitError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, module: str, extra: str, how: str = "") -> None:
        super().__init__(
            f"this needs the Python package '{module}', which is not installed: "
            + (how or f"pip install 'edgekit[{extra}]'")
        )
