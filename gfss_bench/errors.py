"""User-facing errors: the CLI turns them into a one-line message and exit code 2."""


class GFSSError(Exception):
    """An error caused by the user's input (option, file, data), with a message saying what to do."""


def resolve_option(option: str, resolve, value):
    """`resolve(value)` (a registry lookup, a file reader), with its error prefixed by the option that carried
    `value` ("--method: unknown method 'dim' ..."), unless the message already names an option."""
    try:
        return resolve(value)
    except GFSSError as error:
        message = str(error)
        raise GFSSError(message if message.startswith("--") else f"{option}: {message}") from None
