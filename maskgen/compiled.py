"""The one way maskgen compiles a numba kernel (the batched landmark engine, the mask render
and its quality check)."""

from __future__ import annotations

import numba


def njit_cached(**options):
    """numba.njit(cache=True) where a cache folder can be written, plain njit otherwise
    (numba refuses cache=True at decoration time when it finds no writable folder): compiled
    once, then loaded from the cache."""

    def wrap(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(**options)(fn)

    return wrap
