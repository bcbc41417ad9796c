"""Errors raised by the data layer, so stages can print one readable line instead of a traceback."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says where they were looked for and how to get them."""
