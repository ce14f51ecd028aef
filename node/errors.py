"""Errors a user can cause and fix; the CLI prints them as one line, never a traceback."""


class UserError(Exception):
    """A mistake in input, arguments or configuration; the message says what and where."""


class InputFileError(UserError):
    """A data file that cannot be read or does not fit its resource."""


class ConfigError(UserError):
    """A node directory or configuration file that is missing or invalid."""


class NodeUnavailable(UserError):
    """The node is not in a state that allows the request (e.g. not serving)."""
