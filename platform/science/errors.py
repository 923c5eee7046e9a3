"""The errors finegrain raises on purpose.

Every deliberate error class in the package derives from :class:`FinegrainError`
(and keeps a builtin base, e.g. ``ValueError``, so ``except ValueError`` still
catches it).  The ``finegrain`` command line catches ``FinegrainError`` in one
place and prints it as one ``error: ...`` line (exit code 2), no traceback.
"""

from __future__ import annotations

__all__ = ["FinegrainError", "InputError"]


class FinegrainError(Exception):
    """The base of every error the product raises on purpose.

    The message says what is wrong and names the argument, key or file.  The
    CLI prints it as one clear line, ``<label>: <message>``, and exits with
    ``exit_code`` (``error`` and 2 unless a subclass says otherwise).
    """

    #: Exit status of the ``finegrain`` command when this error ends it.
    exit_code: int = 2
    #: First word of the CLI's one-line message.
    label: str = "error"


class InputError(FinegrainError, ValueError):
    """Bad user input: wrong shapes or counts, non-finite values, wrong units."""
