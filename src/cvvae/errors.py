"""The one exception type for problems the user can fix (bad files, bad arguments)."""


class UserInputError(ValueError):
    """A problem with user input; the CLI prints its message as one line and exits with code 2.

    A ``ValueError``, so library callers can catch it as diffusers' own argument errors. The
    message should name the problem and the file, e.g. ``"not a video: clip.txt"``.
    """
