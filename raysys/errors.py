"""The one exception type raysys raises for problems a person can fix."""

from __future__ import annotations


class RaysysError(Exception):
    """A problem with the user's input, files or settings.

    The message says what was wrong, where (file, key, row) and what to do. The CLI prints it as a
    single line and exits with code 2; it never shows a traceback for it.
    """

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        parts = [f"{where}: {message}" if where else message]
        if hint:
            parts.append(hint)
        super().__init__(" — ".join(parts))
        self.where = where
        self.hint = hint
