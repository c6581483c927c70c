"""Expected failures of a stage (bad data, a gate not met): reported without a traceback."""


class StageError(Exception):
    """A stage failed for a reason the user can act on; the message says what and how."""
