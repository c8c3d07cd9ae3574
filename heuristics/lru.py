"""A bounded LRU mapping, for the detector's state.

Kept in a module of its own because it subclasses OrderedDict: the modules
``resolver.native`` compiles cannot subclass a built-in type, and this one is
never compiled (see docs/operations.md, "Compiled modules").
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["LRU"]


class LRU(OrderedDict[Any, Any]):
    """An OrderedDict used as a bounded LRU; ``touch`` marks use."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.evictions = 0

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.limit:
            self.popitem(last=False)
            self.evictions += 1
