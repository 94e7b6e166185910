"""Binary heaps over a pair of arrays (keys, values), compiled, for the searches' candidate and
result lists: a min-heap pops the nearest first, a max-heap keeps the best k with the worst on
top. Inlined into their callers; the caller owns the arrays and their sizes."""

import numba


@numba.njit(cache=True, inline="always")
def sift_down_min(keys, vals, n, i):
    """Restore a min-heap of n items whose item i may be too large."""
    while True:
        left = 2 * i + 1
        if left >= n:
            return
        j = left
        if left + 1 < n:  # the smaller child, chosen without a branch (it goes either way)
            j += keys[left + 1] < keys[left]
        if keys[j] >= keys[i]:
            return
        keys[i], keys[j] = keys[j], keys[i]
        vals[i], vals[j] = vals[j], vals[i]
        i = j


@numba.njit(cache=True, inline="always")
def sift_down_max(keys, vals, n, i):
    """Restore a max-heap of n items whose item i may be too small."""
    while True:
        left = 2 * i + 1
        if left >= n:
            return
        j = left
        if left + 1 < n:  # the larger child, chosen without a branch (it goes either way)
            j += keys[left + 1] > keys[left]
        if keys[j] <= keys[i]:
            return
        keys[i], keys[j] = keys[j], keys[i]
        vals[i], vals[j] = vals[j], vals[i]
        i = j


@numba.njit(cache=True, inline="always")
def push_min(keys, vals, n, key, val):
    """Push onto a min-heap of n items (the arrays have room); returns the new size."""
    i = n
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] <= key:
            break
        keys[i] = keys[parent]
        vals[i] = vals[parent]
        i = parent
    keys[i] = key
    vals[i] = val
    return n + 1


@numba.njit(cache=True, inline="always")
def push_max(keys, vals, n, key, val):
    """Push onto a max-heap of n items (the arrays have room); returns the new size."""
    i = n
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] >= key:
            break
        keys[i] = keys[parent]
        vals[i] = vals[parent]
        i = parent
    keys[i] = key
    vals[i] = val
    return n + 1
