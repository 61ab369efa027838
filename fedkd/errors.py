"""Error types with one-line messages that name what is wrong and where.

Every user-facing failure in fedkd raises one of these, so launchers can print
``str(err)`` as a single line and exit 1 without a traceback.
"""


class FedkdError(ValueError):
    """Base class: a problem with user input (config, data files, payloads)."""


class ConfigError(FedkdError):
    """An invalid or inconsistent configuration value."""


class DataError(FedkdError):
    """A dataset, data file or split that cannot be used as asked."""


class PayloadError(FedkdError):
    """A knowledge payload that fails validation (shape, dtype, range, NaN/Inf)."""
