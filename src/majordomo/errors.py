"""The exception tree, translated at the boundaries (CLI exit codes, HTTP answers).

    MajordomoError              anything the gateway reports to a person: the message says
     │                          what happened and what to do
     ├── ConfigError            a setting has a value that is not allowed
     ├── DatabaseUnavailable    PostgreSQL cannot be reached (readiness, CLI, auth fallback)
     ├── RowsRefused            PostgreSQL refuses usage rows for their content (log writer)
     └── Unauthorized           a request's Majordomo key is missing, unknown or revoked

Add a class only when some code catches it.
"""


class MajordomoError(Exception):
    """An error with a message meant for the person running the gateway."""


class ConfigError(MajordomoError):
    """A configuration value is missing, malformed or out of range."""


class DatabaseUnavailable(MajordomoError):
    """PostgreSQL could not be reached or did not answer in time."""


class RowsRefused(MajordomoError):
    """The database refused to store usage rows for what they hold, not for a lost connection."""


class Unauthorized(MajordomoError):
    """The request's Majordomo key is missing, malformed, unknown or revoked (HTTP 401)."""


def sole_error(error: BaseException) -> BaseException:
    """The one exception inside nested exception groups, or `error` itself.

    trio nurseries (and trio-asyncio's loop) wrap what a task raised in groups; at a
    boundary that reports errors to a person, a group of one is reported as its member.
    """
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
