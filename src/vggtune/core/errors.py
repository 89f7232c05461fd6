"""The one exception type whose message is meant for the person at the terminal."""


class UserError(Exception):
    """Bad input (a path, an image, a config value, a checkpoint) that the user can fix.

    The command line prints ``error: <message>`` as a single line and exits with status 2,
    without a traceback. The message says what is wrong and what to do about it.
    """


class RunComplete(Exception):
    """Nothing to do: ``ckpt_path`` is the state of a run that already trained every epoch it was given.

    Not an error (a job re-submitted after it finished, as a cluster's requeue does, is done): the
    command line prints the message, which says how to train on, and exits with status 0;
    ``vggtune.train`` logs it and returns that run (``run_dir``).
    """

    def __init__(self, message: str, run_dir=None):
        super().__init__(message)
        self.run_dir = run_dir
