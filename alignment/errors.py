"""Errors that a user of the alignment library can cause."""


class AlignmentInputError(ValueError):
    """Bad input to the alignment library: the message names the parameter and what was expected."""
