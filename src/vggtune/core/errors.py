"""The one exception type whose message is meant for the person at the terminal."""


class UserError(Exception):
    """Bad input (a path, an image, a config value, a checkpoint) that the user can fix.

    The command line prints ``error: <message>`` as a single line and exits with status 2,
    without a traceback. The message says what is wrong and what to do about it.
    """
