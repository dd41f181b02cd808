"""Data errors that name what went wrong, so a bad task name or file is fixed without reading code."""

from __future__ import annotations


class UnknownTaskError(LookupError):
    """A requested task is not in the source (local folder or the BIG-bench sdist)."""


class TaskFormatError(ValueError):
    """A task file exists but cannot be turned into examples."""


class DataSourceError(RuntimeError):
    """A data set could be found neither at its local path nor on the Hugging Face hub (e.g. offline)."""
