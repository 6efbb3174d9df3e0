"""select_handlers(): every group to run has a handler and a streams.yaml entry."""

from __future__ import annotations

import pytest

from processors.groups import select_handlers
from processors.runtime import Delivery, HandlerContext
from tests.processors.recording import topology
from zapstream.settings import ConfigError


async def handler(ctx: HandlerContext, delivery: Delivery) -> None:
    pass


TOPOLOGY = topology({"a": {"streams": ["work"]}, "b": {"streams": ["work"]}})


def test_all_groups_by_default_or_the_named_ones() -> None:
    table = {"a": handler, "b": handler}
    assert list(select_handlers(TOPOLOGY, [], table)) == ["a", "b"]
    assert list(select_handlers(TOPOLOGY, ["b"], table)) == ["b"]


def test_a_group_without_handler_or_unknown_name_stops_the_start() -> None:
    with pytest.raises(ConfigError, match=r"group 'b' in streams\.yaml has no handler"):
        select_handlers(TOPOLOGY, [], {"a": handler})
    with pytest.raises(ConfigError, match=r"unknown group 'c' \(streams\.yaml declares: a, b\)"):
        select_handlers(TOPOLOGY, ["c"], {"a": handler})


def test_no_groups_at_all_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no consumer groups"):
        select_handlers(topology({}), [], {})
