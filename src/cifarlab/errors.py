"""The one exception type the command line turns into a clean one-sentence error."""


class CifarlabError(Exception):
    """A problem with the user's input or environment, not a bug.

    The message is a single sentence that names the bad input and what to do about it.
    The command line prints it without a traceback and exits with ``exit_code``.
    """

    exit_code = 2
