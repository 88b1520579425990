"""User-facing errors.

Anything that is the *user's* fault (a missing file, a wrong ``.obs`` key, a config typo, a model
directory that is not a CellDuality model) raises :class:`CellDualityError` with a one-line message
that says what is wrong and how to fix it. The CLI prints that line in red and exits with code 2,
without a traceback. Programming errors stay ordinary exceptions so they keep their traceback.
"""

from __future__ import annotations


class CellDualityError(Exception):
    """An error caused by input the user can fix; ``str(err)`` is a single actionable line."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        # One line, always: a multi-line message would read like a traceback.
        super().__init__(" ".join(str(message).split()))


class InputDataError(CellDualityError):
    """The single-cell data (AnnData / h5ad) cannot be used as given."""


class ConfigError(CellDualityError):
    """A configuration file or option is invalid."""


class ModelError(CellDualityError):
    """A model path is missing or is not a usable (CellDuality) model."""


class TeacherError(CellDualityError):
    """The teacher (e.g. an API) failed in a way retries could not fix."""
