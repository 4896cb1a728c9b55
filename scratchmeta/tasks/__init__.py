"""Task distributions for meta-learning.

Regression: `Sinusoid` (Finn et al. 2017, arXiv:1703.03400v3, Sec. 5.1) and
`FunctionTasks` for any y = f(x; params). Classification: `EpisodeSampler`
draws N-way K-shot episodes from any labelled image set, and the loaders
give `Dataset`s with fixed class splits: `load_glyphs` (offline default),
`load_omniglot` (the standard PNG folders), `load_omniglot_minimal` (real
Omniglot bundled with the package, split by alphabet) and `load_digits`
(scikit-learn). `registry.TASKS` names every task family; `make_sampler`
builds one from a config.

All sampling is host-side with one seeded numpy Generator per sampler
(`state_dict()` / `load_state_dict()` checkpoint it); arrays reach the
active backend through `backend.asarray` at the end of `sample()`.
"""
from .datasets import Dataset, load_digits
from .episodes import EpisodeSampler
from .glyphs import load_glyphs
from .omniglot import load_omniglot
from .omniglot_minimal import load_omniglot_minimal
from .registry import TASKS, load_dataset, make_sampler
from .regression import FunctionTasks, Sinusoid

__all__ = ["Sinusoid", "FunctionTasks", "EpisodeSampler", "Dataset", "load_dataset",
           "load_glyphs", "load_omniglot", "load_omniglot_minimal", "load_digits", "TASKS",
           "make_sampler"]
