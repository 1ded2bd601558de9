"""The one error family users can cause; the CLI prints its message and exits 2."""

from alignment.errors import AlignmentInputError
from encoders.errors import EncoderInputError


class BrainmmError(Exception):
    """A user error: bad file, field, parameter or environment. The message says what was expected."""


# Everything the CLI reports as a one-line user error (no traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (BrainmmError, EncoderInputError, AlignmentInputError)
