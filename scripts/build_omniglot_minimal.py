"""Build scratchmeta/data/omniglot/omniglot_minimal_28px.npz from the bundled zips.

    python scripts/build_omniglot_minimal.py          # (re)write the .npz and SHA256SUMS
    python scripts/build_omniglot_minimal.py --check  # only compare with the shipped files

Decodes every drawing of the two minimal background sets with the `omniglot`
loader's resize (scratchmeta.tasks.omniglot.decode: ink-inverted, LANCZOS to
28x28, uint8) and stores images, character and alphabet indices and names.
Needs Pillow (pip install 'scratchmeta[data]'); loading the result does not.
The zips' checksums are verified first; SHA256SUMS is rewritten with the
zips' (unchanged) and the new array file's checksums.
"""
import argparse
import io
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scratchmeta.tasks import omniglot_minimal as om  # noqa: E402


def build():
    for name in om.ZIPS:
        om.verify(name)
    arrays = om.decode_zips()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return arrays, buffer.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare a fresh decode with the shipped arrays; write nothing")
    args = parser.parse_args(argv)
    arrays, payload = build()
    if args.check:
        shipped = om.load_arrays()
        same = set(shipped) == set(arrays) and all(np.array_equal(shipped[k], arrays[k]) for k in arrays)
        print("the shipped arrays equal a fresh decode" if same else "MISMATCH with a fresh decode")
        return 0 if same else 1
    path = os.path.join(om.FOLDER, om.ARRAYS)
    with open(path, "wb") as f:
        f.write(payload)
    lines = [f"{om.sha256(os.path.join(om.FOLDER, n))}  {n}\n" for n in om.ZIPS + (om.ARRAYS,)]
    with open(os.path.join(om.FOLDER, om.CHECKSUMS), "w") as f:
        f.writelines(lines)
    print(f"wrote {path}: {arrays['images'].shape[0]} drawings of {arrays['alphabet'].size} "
          f"characters in {arrays['alphabets'].size} alphabets, {len(payload):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
