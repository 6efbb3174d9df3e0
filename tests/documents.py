"""Paths into a JSON or YAML document (dicts and lists), for the property tests that mutate
one value of a valid webhook body or streams.yaml."""

from __future__ import annotations

from typing import Any

DocPath = tuple[str | int, ...]  # dict keys and list indexes, from the document down


def paths(document: Any, prefix: DocPath = ()) -> list[DocPath]:
    """Every path into a document, the document itself (the empty path) first."""
    found: list[DocPath] = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


def at(document: Any, path: DocPath) -> Any:
    """The value at `path`."""
    for step in path:
        document = document[step]
    return document
