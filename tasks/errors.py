"""The error users see for bad input: what is wrong, where, and how to fix it.

The CLI prints these without a traceback (exit code 2); anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input (file, parameter, dataset). Message: what, where, how to fix."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None) -> None:
        self.what, self.where, self.fix = what, where, fix
        msg = f"{where}: {what}" if where else what
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)
