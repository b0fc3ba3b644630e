"""Selection networks: a straight-line program of elementwise min / max that puts chosen ranks of n values in place
(pure Python; the programs run on numpy arrays in ``finedetail.ensemble``).

A sorting network with every comparator whose outputs cannot reach a wanted rank removed: of Batcher's merge-exchange
network and two insertion networks (keep the m largest / smallest), the one with the fewest comparator outputs left.
Programs are cached per (n, ranks).
"""

from __future__ import annotations

import functools

__all__ = ["selection_program"]


@functools.lru_cache(maxsize=128)
def selection_program(
    n: int, positions: tuple[int, ...],
) -> tuple[tuple[tuple[bool, int, int, int], ...], tuple[int, ...], int]:
    """A straight-line program putting ascending ranks ``positions`` (0 = smallest) of n values into place.

    Returns ``(ops, results, n_work)``. Slots 0..n-1 hold the inputs (never written), n..n+n_work-1 are work
    buffers, and n + n_work + j is output j's destination. ``ops`` are ``(is_max, a, b, out)`` meaning
    ``out = max(a, b)`` or ``min(a, b)``; ``results[j]`` is the slot that holds output j afterwards (its
    destination, or an input slot when no comparator touches that wire).
    """
    net = min((_pruned(c, positions) for c in _candidates(n, positions)), key=lambda p: sum(x[2] + x[3] for x in p))
    slot = list(range(n))  # wire -> slot holding its current value
    free: list[int] = []
    n_work = 0
    ops: list[list] = []
    last_op: dict[int, int] = {}

    def fresh() -> int:
        nonlocal n_work
        if free:
            return free.pop()
        n_work += 1
        return n + n_work - 1

    for a, b, need_lo, need_hi in net:
        sa, sb = slot[a], slot[b]
        owned = [s for s in (sa, sb) if s >= n]  # work slots: dead after this comparator, reusable
        if need_lo and need_hi:
            lo = fresh()  # min cannot overwrite a or b: max still reads both
            ops.append([False, sa, sb, lo])
            last_op[a] = len(ops) - 1
            hi = owned.pop(0) if owned else fresh()
            ops.append([True, sa, sb, hi])
            last_op[b] = len(ops) - 1
            slot[a], slot[b] = lo, hi
        else:
            dst = owned.pop(0) if owned else fresh()
            ops.append([need_hi, sa, sb, dst])
            wire = b if need_hi else a
            last_op[wire] = len(ops) - 1
            slot[wire] = dst
        free.extend(owned)
    results = []
    for j, p in enumerate(positions):
        if p in last_op:  # the comparator that finishes this wire writes straight into the destination
            ops[last_op[p]][3] = n + n_work + j
            results.append(n + n_work + j)
        else:
            results.append(slot[p])
    return tuple((bool(f), a, b, o) for f, a, b, o in ops), tuple(results), n_work


def _candidates(n: int, positions: tuple[int, ...]) -> list[list[tuple[int, int]]]:
    """Comparator networks (pairs (i, j), i < j: min to i, max to j) that put the ranks ``positions`` in place:
    Batcher's merge-exchange sort, and insertion into m kept slots from whichever end is nearer to all ranks."""
    nets = [_batcher(n)]
    top = n - min(positions)  # keep the `top` largest
    bottom = max(positions) + 1  # or the `bottom` smallest
    nets.append(_slots(n, top))
    nets.append([(n - 1 - j, n - 1 - i) for i, j in _slots(n, bottom)])
    return nets


def _batcher(n: int) -> list[tuple[int, int]]:
    """Batcher's merge-exchange sorting network for any n (Knuth, TAOCP vol. 3, 5.2.2 Algorithm M)."""
    net: list[tuple[int, int]] = []
    if n < 2:
        return net
    t = (n - 1).bit_length()
    p = 1 << (t - 1)
    while p > 0:
        q, r, d = 1 << (t - 1), 0, p
        while True:
            net.extend((i, i + d) for i in range(n - d) if i & p == r)
            if q == p:
                break
            d, q, r = q - p, q >> 1, p
        p >>= 1
    return net


def _slots(n: int, m: int) -> list[tuple[int, int]]:
    """Network leaving the m largest of n values sorted ascending on wires n-m..n-1: sort the last m wires, then
    let each other wire enter at the bottom slot (keeping the larger) and bubble up."""
    s = list(range(n - m, n))
    net = [(s[i], s[j]) for i, j in _batcher(m)]
    for x in range(n - m - 1, -1, -1):
        net.append((x, s[0]))
        net.extend((s[i], s[i + 1]) for i in range(m - 1))
    return net


def _pruned(net: list[tuple[int, int]], positions: tuple[int, ...]) -> list[tuple[int, int, bool, bool]]:
    """Keep the comparators some wanted output depends on, with which of their outputs (min, max) are needed."""
    live = set(positions)
    kept = []
    for a, b in reversed(net):
        need_lo, need_hi = a in live, b in live
        if need_lo or need_hi:
            kept.append((a, b, need_lo, need_hi))
            live.update((a, b))
    return kept[::-1]
