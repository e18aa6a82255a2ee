"""User-facing errors and the CLI boundary that turns them into one-line messages."""
from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["MedtlError", "find_user_error", "exit_on_user_error"]

log = logging.getLogger("medtl")
F = TypeVar("F", bound=Callable[..., Any])


class MedtlError(Exception):
    """A problem with the user's input or configuration.

    The message must name the file, field or key at fault and say how to fix it; the CLI prints
    it as one line, without a traceback.
    """


def find_user_error(exc: BaseException) -> MedtlError | None:
    """Return the first :class:`MedtlError` in ``exc``'s cause/context chain.

    MONAI's ``Compose`` and the data loaders wrap exceptions raised inside transforms, so the
    user error may sit a few links down the chain.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MedtlError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def exit_on_user_error(func: F) -> F:
    """Decorate a CLI task: a :class:`MedtlError` anywhere in the chain exits with status 2 and one line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
            user_error = find_user_error(exc)
            if user_error is None:
                raise
            message = str(user_error).splitlines()[0] if str(user_error) else type(user_error).__name__
            print(f"medtl: error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
