"""The error for data that cannot be used as given (its own module: the source loaders and the file
checks both raise it)."""


class DataSourceError(ValueError):
    """The data set cannot be used as given; the message names the source and the fix."""
