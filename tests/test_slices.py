"""Splitting a pool and keeping slices as ranges: pure arithmetic, exact and with properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticketing.slices import RangeSet, compress, count, cut, expand, parse_ranges, shares

pytestmark = pytest.mark.timeout(60)


# -- shares ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (10, [1, 1, 1], [4, 3, 3]),
        (0, [1, 1, 1], [0, 0, 0]),
        (12, [1, 1, 1, 1, 1], [3, 3, 2, 2, 2]),
        (8, [3, 1], [6, 2]),
        (10, [1, 0], [10, 0]),
        (7, [0.5, 0.5], [4, 3]),
        (100, [1, 2, 2], [20, 40, 40]),
        (5, [1], [5]),
        (3, [], []),
    ],
)
def test_shares_exact(total: int, weights: list[float], expected: list[int]) -> None:
    assert shares(total, weights) == expected


def test_one_ticket_over_five_shards_goes_to_exactly_one() -> None:
    got = shares(1, [1] * 5)
    assert sorted(got) == [0, 0, 0, 0, 1]


@pytest.mark.parametrize(("total", "weights"), [(-1, [1]), (3, [1, -1]), (3, [0, 0]), (3, [-1, 2])])
def test_shares_refuses_bad_input(total: int, weights: list[float]) -> None:
    with pytest.raises(ValueError):
        shares(total, weights)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=100_000),
    st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=12).filter(any),
)
def test_shares_properties(total: int, weights: list[int]) -> None:
    got = shares(total, weights)
    assert len(got) == len(weights)
    assert sum(got) == total
    scale = sum(weights)
    for n, w in zip(got, weights, strict=True):
        exact = total * w / scale
        assert math.floor(exact) <= n <= math.ceil(exact)  # largest remainder quota
        if w == 0:
            assert n == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=100_000), st.integers(min_value=1, max_value=20))
def test_equal_weights_spread_the_remainder(total: int, n: int) -> None:
    got = shares(total, [1] * n)
    assert max(got) - min(got) <= 1
    q, r = divmod(total, n)
    assert got.count(q + 1) == (r if r else 0)  # one extra each, not all to the first
    assert got[0] <= q + 1


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=10_000),
    st.lists(st.floats(min_value=0.01, max_value=1000, allow_nan=False), min_size=1, max_size=8),
)
def test_float_weights_keep_the_sum(total: int, weights: list[float]) -> None:
    got = shares(total, weights)
    assert sum(got) == total and min(got) >= 0


# -- cut ------------------------------------------------------------------------------


def test_cut_consecutive_pieces() -> None:
    assert cut([(0, 10)], [4, 3, 3]) == [[(0, 4)], [(4, 7)], [(7, 10)]]
    assert cut([(0, 2), (5, 9)], [3, 0, 3]) == [[(0, 2), (5, 6)], [], [(6, 9)]]
    assert cut([(0, 5)], [2]) == [[(0, 2)]]  # the rest stays uncut
    assert cut([], [0, 0]) == [[], []]
    with pytest.raises(ValueError):
        cut([(0, 3)], [2, 2])


ranges_st = st.sets(st.integers(min_value=0, max_value=500), max_size=120).map(compress)


@settings(max_examples=300, deadline=None)
@given(ranges_st, st.data())
def test_cut_properties(ranges: list[tuple[int, int]], data: st.DataObject) -> None:
    total = count(ranges)
    sizes = data.draw(st.lists(st.integers(min_value=0, max_value=total), max_size=6))
    if sum(sizes) > total:
        with pytest.raises(ValueError):
            cut(ranges, sizes)
        return
    pieces = cut(ranges, sizes)
    assert [count(p) for p in pieces] == sizes
    flat = [s for p in pieces for s in expand(p)]
    assert flat == expand(ranges)[: sum(sizes)]  # disjoint, in order, lowest first
    for p in pieces:
        assert compress(expand(p)) == p  # each piece is already normalised


# -- compress / expand / parse ----------------------------------------------------------


def test_compress_and_expand() -> None:
    assert compress([7, 1, 2, 3, 3]) == [(1, 4), (7, 8)]
    assert expand([(1, 4), (7, 8)]) == [1, 2, 3, 7]
    assert compress([]) == [] and count([(0, 3), (5, 6)]) == 4


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=200))
def test_compress_expand_round_trip(serials: list[int]) -> None:
    ranges = compress(serials)
    assert expand(ranges) == sorted(set(serials))
    assert compress(expand(ranges)) == ranges
    for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert end < start  # disjoint and never adjacent
    assert parse_ranges([list(r) for r in ranges]) == ranges


@pytest.mark.parametrize(
    "value",
    ["x", [[1]], [[2, 1]], [[1, 1]], [[-1, 2]], [[0, 3], [2, 4]], [[0, True]], [[0, 1.5]], [5]],
)
def test_parse_ranges_refuses_bad_input(value: object) -> None:
    with pytest.raises(ValueError):
        parse_ranges(value)


# -- RangeSet ------------------------------------------------------------------------------


def test_take_lowest_first_and_release_highest() -> None:
    pool = RangeSet([(10, 13), (0, 2)])
    assert len(pool) == 5 and pool.ranges() == [(0, 2), (10, 13)]
    assert [pool.take(), pool.take(), pool.take()] == [0, 1, 10]
    assert pool.ranges() == [(11, 13)]
    pool.add([(20, 25)])
    assert pool.release_tail(3) == [(22, 25)]
    assert pool.release_tail(3) == [(12, 13), (20, 22)]
    assert pool.ranges() == [(11, 12)] and len(pool) == 1
    assert pool.release_tail(5) == [(11, 12)]
    assert pool.take() is None and len(pool) == 0 and pool.release_tail(1) == []


def test_put_back_merges_and_overlap_is_refused() -> None:
    pool = RangeSet([(0, 5)])
    first = pool.take()
    assert first == 0 and 0 not in pool
    pool.put_back(0)
    assert pool.ranges() == [(0, 5)] and 0 in pool and len(pool) == 5
    with pytest.raises(ValueError):
        pool.put_back(3)
    with pytest.raises(ValueError):
        pool.add([(4, 8)])
    with pytest.raises(ValueError):
        pool.add([(10, 12), (11, 13)])
    assert pool.ranges() == [(0, 5)] and len(pool) == 5  # refused adds changed nothing
    pool.add([(5, 7)])  # adjacent is fine
    assert pool.ranges() == [(0, 7)]
    pool.discard([3, 6, 99])
    assert pool.ranges() == [(0, 3), (4, 6)] and len(pool) == 5


ops = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.just(0)),
        st.tuples(st.just("tail"), st.integers(min_value=0, max_value=30)),
        st.tuples(st.just("put_back"), st.integers(min_value=0, max_value=10_000)),
        st.tuples(st.just("add"), st.integers(min_value=0, max_value=300)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(min_value=0, max_value=300), max_size=100), ops)
def test_rangeset_matches_a_set_model(initial: set[int], operations: list[tuple[str, int]]) -> None:
    pool = RangeSet(compress(initial))
    model = set(initial)
    out: list[int] = []  # serials handed out, candidates for put_back
    for op, arg in operations:
        if op == "take":
            got = pool.take()
            assert got == (min(model) if model else None)
            if got is not None:
                model.discard(got)
                out.append(got)
        elif op == "tail":
            released = expand(pool.release_tail(arg))
            expected = sorted(model)[len(model) - min(arg, len(model)) :]
            assert released == expected
            model -= set(released)
        elif op == "put_back" and out:
            serial = out.pop(arg % len(out))
            pool.put_back(serial)
            model.add(serial)
        elif op == "add":
            fresh = (1000 + arg, 1000 + arg + 3)
            if any(s in model for s in range(*fresh)):
                with pytest.raises(ValueError):
                    pool.add([fresh])
            else:
                pool.add([fresh])
                model |= set(range(*fresh))
                out = [s for s in out if s not in model]  # back in the pool
        assert len(pool) == len(model)
        assert expand(pool.ranges()) == sorted(model)
        assert compress(model) == pool.ranges()  # always normalised
    for s in list(model)[:20]:
        assert s in pool
    assert -1 not in pool and 10_001 not in pool
