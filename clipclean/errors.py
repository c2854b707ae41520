"""clipclean's user-facing errors: bad input, said in one line that names what to change.

Every error clipclean raises because of what it was given (a file, a folder, a flag, a value) is a
:class:`ClipcleanError`; the library's specific ones subclass it as well as the built-in type callers already catch
(``DataError`` is a ``ValueError``, ``ModelLoadError`` a ``RuntimeError``...). The scripts' top-level handler
(:func:`clipclean.cli.common.run_cli`) prints such an error as ``error: <message>`` and exits with status 2, without
a traceback unless ``--debug`` is given.

Example::

    >>> from clipclean.errors import ClipcleanError
    >>> try:
    ...     load_image_caption_dataset("pairs.csv")
    ... except ClipcleanError as error:  # DataError: "pairs.csv row 3 (line 4): image 'a.jpg' not found"
    ...     print(error)
"""

from __future__ import annotations

__all__ = ["ClipcleanError", "OutputDirError", "TrainingDivergedError", "UsageError"]


class ClipcleanError(Exception):
    """Base of clipclean's user-facing errors; the message says what is wrong and what to change."""


class UsageError(ClipcleanError, ValueError):
    """A command-line value no run can use (``--epochs 0``, ``--poison-rate 2``); the message names the flag."""


class OutputDirError(ClipcleanError, OSError):
    """An output folder or file that cannot be used: a file in the way, not writable, or holding a previous result
    that would be overwritten silently."""


class TrainingDivergedError(ClipcleanError, RuntimeError):
    """The training loss became NaN or infinite; the step was not taken and the last checkpoint is the last good
    state."""
