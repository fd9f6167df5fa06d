"""The one exception type for mistakes a user can fix.

The CLI prints a `LookalikeError` as a short message without a traceback; anything else is a bug
and keeps its traceback.
"""


class LookalikeError(Exception):
    """A user-facing error: the message names the file or setting, the value seen and the fix."""

    exit_code = 2  # the CLI's exit status for it


class Interrupted(LookalikeError):
    """The user pressed Ctrl-C: what was done is kept, and the message says how to continue."""

    exit_code = 130


class ConfigError(LookalikeError):
    """A run config that cannot be used: unknown key, wrong type or out-of-range value."""


class ModelLoadError(LookalikeError):
    """A model source that cannot be loaded: missing path, offline hub id, not a FLUX pipeline."""


class LoraError(LookalikeError):
    """A LoRA file that cannot be applied: not a LoRA, other model family, mismatched shapes."""
