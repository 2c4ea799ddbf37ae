"""The one exception type users see: its message is printed as a single line by the CLI."""


class DeadzoneError(Exception):
    """Bad input or an impossible request, explained in one line."""
