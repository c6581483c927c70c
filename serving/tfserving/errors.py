"""The one error the production tools raise for bad input: a line that says what was received, what
was expected and how to fix it. The CLI prints it and exits 2; anything else is a bug, with its traceback."""


class UsageError(Exception):
    """A problem with the command's input (its flags, the repository, a config file)."""
