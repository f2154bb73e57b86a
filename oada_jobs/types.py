"""Type aliases shared across oada-jobs.

The bottom of the framework: imports nothing from the package, so every
module may import it. The work-function protocol lives with the context it
is called with (:mod:`oada_jobs.context`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

__all__ = ["Json", "JsonObject", "Tree", "UniquePolicy"]

#: Any JSON value as decoded by :mod:`json`.
Json: TypeAlias = dict[str, Any] | list[Any] | str | int | float | bool | None

#: A JSON object.
JsonObject: TypeAlias = dict[str, Any]

#: An OADA tree: nested keys, ``"*"`` for any key, ``_type`` marking a
#: resource boundary and ``_rev`` a versioned link (see docs/client.md).
Tree: TypeAlias = Mapping[str, Any]


#: What happens to a job whose unique key is already held in its queue:
#: refused (fails as ``duplicate``), merged into the holder, or allowed.
UniquePolicy = Literal["refuse", "merge", "allow"]
