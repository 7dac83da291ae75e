"""Errors that the CLI shows as one line, without a traceback."""


class AvemoError(Exception):
    """A problem with the user's input (file, data, configuration), not a bug."""
