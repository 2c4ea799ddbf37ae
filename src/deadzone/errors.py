"""The exceptions of deadzone: :class:`DeadzoneError`, the one users see (the CLI prints its
message as a single line), and :class:`RunFailed`, a run that cannot go on."""


class DeadzoneError(Exception):
    """Bad input or an impossible request, explained in one line."""


class RunFailed(Exception):
    """A run cannot go on (it met a non-finite number, or a strategy cannot be applied): it is
    recorded ``failed`` with this message, and the runs beside it go on."""
