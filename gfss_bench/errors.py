"""User-facing errors: the CLI turns them into a one-line message and exit code 2."""


class GFSSError(Exception):
    """An error caused by the user's input (option, file, data), with a message saying what to do."""
