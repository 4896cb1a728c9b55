"""scratchmeta with its speed overlay switched off (sm.use_fast_paths(False)).

The same workload code as peers/scratchmeta_impl.py; every step runs only the
forwards and VJPs written in the engine's core files, the code a reader reads.
Set beside `scratchmeta` (fast paths on) it shows what the overlay buys.
"""
from . import scratchmeta_impl as _impl

NAME = "scratchmeta_plain"


def available():
    ok, why = _impl.available()
    if ok and not hasattr(_impl.sm, "use_fast_paths"):
        return False, "this engine has no fast-path switch (sm.use_fast_paths)"
    return ok, why


globals().update(_impl.workloads(fast=False))
