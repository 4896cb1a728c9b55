"""The algorithms, one module each, and the registry that names them.

`make_learner(config)` builds the MetaLearner for `config["algorithm"]`.
Modules are imported lazily, so an algorithm's optional dependencies are
needed only when it is used.
"""
import importlib

# algorithm name -> module that defines make_learner(config)
ALGORITHMS = {
    "maml": "scratchmeta.algorithms.maml",
    "fomaml": "scratchmeta.algorithms.maml",
    "reptile": "scratchmeta.algorithms.reptile",
    "metasgd": "scratchmeta.algorithms.metasgd",
    "anil": "scratchmeta.algorithms.anil",
    "protonet": "scratchmeta.algorithms.protonet",
    "matching": "scratchmeta.algorithms.matching",
    "icl": "scratchmeta.algorithms.icl",
    "cnp": "scratchmeta.algorithms.cnp",
}


def make_learner(config):
    """The MetaLearner that `config` describes (see scratchmeta.train for the schema)."""
    name = config.get("algorithm")
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    module = importlib.import_module(ALGORITHMS[name])
    return module.make_learner(config)
