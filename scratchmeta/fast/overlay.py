"""The overlay's one mechanism: an entry that runs in place of a core primitive.

An entry names the primitive it replaces and gives a replacement forward, a
replacement VJP, or both. The contract differs from the core's in one way: a
fast forward may return `Saved(out, **arrays)`, and the arrays reach the fast
VJP as the keyword argument `saved` (like PyTorch's ctx.save_for_backward).
The arrays are constants, so a fast VJP uses them only on a backward pass that
is not recorded (grad mode off); a recorded backward runs the core VJP.

    entry = replace(windows.conv, forward=fast_conv, vjp=fast_conv_vjp,
                    why="...")        # sets windows.conv.fast = entry

A composite of functional.py marked `@composite` can be replaced whole with
`replace_composite(F.conv2d_cnhw, fn, why=...)`, where one fused primitive is
the only way to a speed-up. `ENTRIES` lists every entry (docs and tests read it).
"""
from ..tensor import Tensor, lift, record

ENTRIES = []


class Saved:
    """What a fast forward may return: its output and arrays its VJP reuses."""

    __slots__ = ("value", "arrays")

    def __init__(self, value, **arrays):
        self.value, self.arrays = value, arrays


class Entry:
    """A primitive's replacement: called like the primitive while the fast paths are on."""

    def __init__(self, primitive, forward, vjp, why):
        self.primitive, self.name, self.why = primitive, primitive.name, why
        self.forward = forward if forward is not None else primitive.forward
        self.vjp_fn = vjp if vjp is not None else primitive.vjp_fn
        self.replaces = tuple(k for k, f in (("forward", forward), ("vjp", vjp)) if f is not None)

    def __call__(self, *args, **kw):
        ts = lift(args)
        result = self.forward(*[t.data for t in ts], **kw)
        if isinstance(result, Saved):
            result, kw = result.value, dict(kw, saved=result.arrays)
        return record(Tensor(result), self, ts, kw)

    def __repr__(self):
        return f"<fast entry for {self.name}: {', '.join(self.replaces)}>"


class CompositeEntry:
    def __init__(self, composite, fn, why):
        self.composite, self.name, self.why = composite, composite.__name__, why
        self.fn, self.replaces = fn, ("composite",)

    def __call__(self, *args, **kw):
        return self.fn(*args, **kw)

    def __repr__(self):
        return f"<fast entry for composite {self.name}>"


def replace(primitive, forward=None, vjp=None, why=""):
    """Register a replacement forward and/or VJP for `primitive`."""
    if primitive.fast is not None:
        raise ValueError(f"fast paths: {primitive.name} already has an overlay entry")
    if forward is None and vjp is None:
        raise ValueError(f"fast paths: an entry for {primitive.name} replaces nothing")
    entry = Entry(primitive, forward, vjp, why)
    primitive.fast = entry
    ENTRIES.append(entry)
    return entry


def replace_composite(composite, fn, why=""):
    """Register `fn` in place of a functional composite marked @composite."""
    if not hasattr(composite, "reference"):
        raise ValueError(f"fast paths: {composite.__name__} is not marked @composite")
    entry = CompositeEntry(composite, fn, why)
    composite.fast = entry
    ENTRIES.append(entry)
    return entry


def without_saved(kw):
    """A node's static arguments without the fast forward's saved arrays (for a core VJP)."""
    if "saved" not in kw:
        return kw
    return {k: v for k, v in kw.items() if k != "saved"}
