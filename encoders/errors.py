"""Errors that a user of the encoders can cause (bad input, bad checkpoint folder, bad config)."""


class EncoderInputError(ValueError):
    """Bad input to an encoder: the message names the parameter or file and what was expected."""
