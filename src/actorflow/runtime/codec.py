"""The one codec for every user value that enters the log: values (``values.py``) and
exceptions (``errors_codec.py``) as JSON-compatible trees, and back. See ``values.py`` for the
tree format.
"""

from __future__ import annotations

from actorflow.runtime.errors_codec import StepError, error_from_tree, error_to_tree
from actorflow.runtime.values import (
    MAX_DEPTH,
    JSONValue,
    digest,
    dumps,
    from_tree,
    loads,
    register,
    to_tree,
)

__all__ = [
    "MAX_DEPTH",
    "JSONValue",
    "StepError",
    "digest",
    "dumps",
    "error_from_tree",
    "error_to_tree",
    "from_tree",
    "loads",
    "register",
    "to_tree",
]
