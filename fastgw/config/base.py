"""The one base Struct that carries the config's decoding policy, and the name type most sections use."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from .values import Duration

__all__ = ["Base", "Name"]

Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        description="A name: letters, digits, '_', '.', '-'; not starting with '.' or '-'.",
    ),
]


class Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Common policy of every config Struct.

    `forbid_unknown_fields` and `frozen` are inherited; msgspec applies `kw_only` only to the fields of
    the class that sets it, so every subclass repeats `kw_only=True`.
    """

    def __post_init__(self) -> None:
        # Duration fields are decoded to Duration instances (msgspec checks the dec_hook's result
        # type); hand the runtime plain floats.
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, Duration):
                msgspec.structs.force_setattr(self, name, float(value))
