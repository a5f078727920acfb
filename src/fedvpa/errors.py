"""Errors that the CLI turns into a one-line message and exit code 2.

Every user-facing failure caused by bad input is a ``FedvpaInputError`` so the CLI can print
``file:line: field: reason`` and exit 2 without a traceback, and so that no earlier result is lost
(the error is raised before anything is written).
"""

from __future__ import annotations


class FedvpaInputError(Exception):
    """Bad user input: a file, line and field that a person can go and fix."""

    exit_code = 2

    def __init__(
        self,
        reason: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ""
        if self.path is not None:
            where = str(self.path)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        field = f"field '{self.field}': " if self.field else ""
        return f"{where}{field}{self.reason}"


class DataFormatError(FedvpaInputError):
    """A preference-data record that cannot be parsed or fails validation."""


class ConfigError(FedvpaInputError):
    """A configuration value that is missing, of the wrong type or out of range."""
