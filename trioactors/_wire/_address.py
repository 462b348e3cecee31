"""Actor addresses: ``name@node``."""

from __future__ import annotations

import re
from typing import final

import attrs

__all__ = ["Address", "check_node_name"]

_NAME = re.compile(r"[A-Za-z0-9_.:$-]{1,200}")
_NODE = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def check_node_name(node: str) -> str:
    """Return ``node`` if it is a valid node name, else raise ``ValueError``."""
    if not _NODE.fullmatch(node):
        raise ValueError(f"invalid node name {node!r}: use 1-100 letters, digits, '_', '.' or '-'")
    return node


@final
@attrs.frozen
class Address:
    """Where an actor lives: its registered ``name`` on ``node``.

    Written ``name@node`` (``worker@node-b``).

    .. versionadded:: 0.1
    """

    name: str
    node: str

    def __attrs_post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"invalid actor name {self.name!r} in an address: use 1-200 letters, "
                "digits, '_', '.', ':', '$' or '-'"
            )
        check_node_name(self.node)

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``"name@node"``.

        Raises:
          ValueError: not of the form ``name@node`` with valid parts.
        """
        name, at, node = text.rpartition("@")
        if not at or not name:
            raise ValueError(
                f"invalid address {text!r}: expected 'name@node', e.g. 'worker@node-b'"
            )
        return cls(name, node)

    def __str__(self) -> str:
        return f"{self.name}@{self.node}"
