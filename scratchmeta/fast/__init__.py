"""The speed overlay: faster replacements of named core primitives.

The engine's core files (tensor, ops, windows, normalization, activations,
functional) hold one forward and one VJP per primitive, written as the papers
write them. Each module here registers, for primitives of one family, a
replacement forward and/or VJP (overlay.replace) that computes the same
function faster: in place, on raw arrays when nothing will differentiate the
backward pass, or fused. Entries run while the fast paths are on:

    sm.use_fast_paths(False)     # or env SCRATCHMETA_FAST=0: the reference runs

and tests/test_fast_paths.py checks every entry against the primitive it
replaces, at orders 1 and 2. `ENTRIES` lists them; docs/engine.md explains each.
"""
# each module registers its entries when imported
from . import activations, attention, fusion, matmul, normalization, pooling, windows  # noqa: F401
from .overlay import ENTRIES, Saved, replace, replace_composite  # noqa: F401
