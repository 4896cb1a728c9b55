"""`python -m scratchmeta` is the `scratchmeta` command."""
import sys

from .cli import main

sys.exit(main())
