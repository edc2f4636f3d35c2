"""The one exception type for problems the user can fix (bad input, missing files, wrong options).

The CLI turns it into one line on stderr and exit status 1; anything else is a bug and shows a traceback.
"""


class EdgekitError(Exception):
    """A user-facing error: the message names the file or option and the problem."""


class MissingDependency(EdgekitError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, module: str, extra: str, how: str = "") -> None:
        super().__init__(
            f"this needs the Python package '{module}', which is not installed: "
            + (how or f"pip install 'edgekit[{extra}]'")
        )
