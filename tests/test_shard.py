"""A shard's reads when the cluster retires a copy under them (server/cluster/shard.py)."""

import pytest

from curator.errors import CuratorError
from curator_server.cluster.shard import Copy, Shard, ShardUnavailableError


def shard_of_two():
    lost = []
    shard = Shard(0, lambda shard, copy: lost.append(copy))
    first, second = (Copy(f"shard0-{n}", None, f"node{n}", f"127.0.0.1:{n}", "key") for n in (1, 2))
    shard.add(first)
    shard.add(second)
    return shard, first, second, lost


def test_a_read_on_a_copy_moved_away_meanwhile_is_asked_again_of_the_copies_left():
    shard, first, second, lost = shard_of_two()

    def call(copy):
        if copy is first:  # the cluster retires it while the call runs: its channel closes
            shard.remove(first)
            raise CuratorError("INTERNAL: CANCELLED: Channel closed!")
        return copy.name

    assert shard.read(call) == "shard0-2"
    assert lost == []  # retired on purpose, not lost


def test_a_refusal_from_a_copy_in_service_stands():
    shard, first, second, lost = shard_of_two()
    asked = []

    def call(copy):
        asked.append(copy)
        raise CuratorError("INVALID_ARGUMENT: k must be positive")

    with pytest.raises(CuratorError, match="k must be positive"):
        shard.read(call)
    assert asked == [first] and lost == []


def test_a_copy_that_does_not_answer_is_lost_and_the_next_one_answers():
    shard, first, second, lost = shard_of_two()

    def call(copy):
        if copy is first:
            raise ValueError("Cannot invoke RPC on closed channel!")
        return copy.name

    assert shard.read(call) == "shard0-2"
    assert lost == [first] and shard.copies == [second]


def test_no_copy_left_is_unavailable():
    shard, first, second, lost = shard_of_two()

    def call(copy):
        raise ValueError("Cannot invoke RPC on closed channel!")

    with pytest.raises(ShardUnavailableError):
        shard.read(call)
    assert lost == [first, second]
