"""Error types of the plugin.

Every problem the user can fix (a bad option, a broken checkpoint, an unknown task) is a
``ForgettingError`` subclass with a one-line message that says what was wrong, where, and
what to do. The plugin turns these into a clean test error, never a traceback wall.
"""

from __future__ import annotations


class ForgettingError(Exception):
    """Base class of the plugin's own, user-facing errors."""


class ConfigError(ForgettingError):
    """A bad option, marker argument or task declaration (a usage error)."""


class CheckpointError(ForgettingError):
    """A checkpoint reference that cannot be loaded safely."""


class TaskError(ForgettingError):
    """A task that cannot be built or evaluated (missing data, misaligned ids...)."""


class EvaluationError(ForgettingError):
    """A model that cannot be evaluated on a task."""
