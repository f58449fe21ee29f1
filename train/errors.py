"""The one exception type the command line turns into a one-line message."""

__all__ = ["NonFiniteLossError", "UsageError"]


class UsageError(Exception):
  """Bad input from the user: unknown names, missing data, invalid values.

  The CLI prints ``error: <message>`` and exits with status 2, no traceback.
  """


class NonFiniteLossError(UsageError):
  """Training produced a non-finite loss; the last good checkpoint is kept."""
