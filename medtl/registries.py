"""What the registries of adaptation methods and objectives share: the decorator that fills a table, and the check
of a config's ``options`` against the registered class's arguments."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from medtl.errors import MedtlError

__all__ = ["registrar", "checked_options"]

C = TypeVar("C", bound=type)


def registrar(table: dict[str, Any], kind: str, name: str, attribute: str) -> Callable[[C], C]:
    """A class decorator that registers the class in ``table`` under ``name`` and sets ``cls.<attribute> = name``;
    a name registered twice is a programming error (``ValueError``)."""

    def decorator(cls: C) -> C:
        if name in table:
            raise ValueError(f"{kind} '{name}' is registered twice")
        table[name] = cls
        setattr(cls, attribute, name)
        return cls

    return decorator


def checked_options(cls: type, group: str, name: str, options: Mapping[str, Any], provided: Mapping[str, Any],
                    reserved: Iterable[str] = ()) -> dict[str, Any]:
    """``options`` (the config's ``<group>.options``) plus those of ``provided`` that ``cls`` takes; one line naming
    the unknown options and the accepted ones. ``reserved``: arguments set elsewhere in the config, not listed."""
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        hidden = {"self", *provided, *reserved}
        raise MedtlError(f"{group}.options {unknown} are not arguments of {group} '{name}'; "
                         f"it takes {sorted(set(accepted) - hidden)}")
    return {**options, **{key: value for key, value in provided.items() if key in accepted}}
