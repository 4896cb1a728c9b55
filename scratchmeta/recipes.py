"""Every default configuration, in one table: algorithm x task -> recipe.

`scratchmeta train ALGO --task TASK` starts from RECIPES[(ALGO, TASK)]
(train.build_config), and command-line flags override single values. A
recipe is a plain dict:

    task       what tasks are sampled (scratchmeta.tasks)
    model      nn.build_model's dict (the ICL transformer and the CNP read their own)
    algo       the learner's keyword arguments (inner_lr, inner_steps, ...)
    optimizer  the outer loop's optimiser (scratchmeta.optim.make_optimizer)
    steps, meta_batch, eval_every: outer steps, tasks a step, steps between evaluations
    dtype      (optional) the default float dtype of the run

The blocks below are the building parts; each row of RECIPES spells out the
values that differ. Every value carries its reason. To change a recipe,
change the row (or the block it names) and nothing else.

docs/recipes.md tables every value against the authors' code (repository,
file and line). On Omniglot (omniglot, omniglot-minimal) the recipes are the
reference code's: MAML's network, initialisation and loss scale, Reptile's
annealed meta step and inner Adam, Matching Networks' 5-way episodes,
ProtoNet's halving learning rate; a value marked "ours" differs from the
reference, for the reason given beside it (mostly: a CPU budget).
"""
import copy

# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------
SINE_TASK = {"name": "sinusoid",        # Finn et al. Sec. 5.1: amplitude 0.1-5, phase 0-pi
             "k_support": 10,            # Finn et al. 2017 Sec. 5.1: K = 10 shots
             "k_query": 10}              # 10 query points a task (as K; Finn et al.'s code)

FEW_SHOT_TASK = {"n_way": 5,             # 5-way (Finn et al. Sec. 5.2; Snell et al. Sec. 3.1)
                 "k_shot": 1,            # 1-shot
                 "n_query": 15}          # 15 queries a class at test time (Snell et al.)

LINREG_TASK = {"name": "linreg",
               "n_dims": 5,              # d = 5 (Garg et al. use 20; sized for a CPU)
               "n_points": 15,           # 15 (x, y) pairs a prompt: k = 0..14 in context
               "noise_std": 0.0,         # noiseless y = w.x, as Garg et al.'s main task
               "sparsity": None,         # dense w
               "curriculum": {           # Garg et al. Sec. 4: grow d and the prompt length
                   "dims": {"start": 2, "end": 5, "inc": 1, "interval": 500},     # d: 2 -> 5, +1 / 500 steps
                   "points": {"start": 5, "end": 15, "inc": 2, "interval": 500}}}  # n: 5 -> 15, +2 / 500 steps

# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
SINE_MLP = {"model": "mlp",
            "sizes": [1, 40, 40, 1],     # Finn et al. Sec. 5.1: two hidden layers of 40
            "activation": "relu"}        # ReLU (Finn et al. Sec. 5.1)

CONV4 = {"model": "conv4",
         "in_channels": 1,               # grey-scale glyphs
         "hidden": 64,                   # 64 filters a block (Vinyals et al.; Finn et al. Sec. 5.2)
         "n_classes": 5,                 # a head of n_way logits (build_config sets it to n_way)
         "image_size": 28,               # 28 x 28 (Finn et al.'s Omniglot size)
         "blocks": 4}                    # four conv-BN-ReLU-pool blocks

MAML_CONV4 = {"model": "maml-conv4",     # cbfinn/maml's Omniglot network (nn.MAMLConv4):
              "in_channels": 1,          # strided 3x3 convs, no max-pool, spatial mean, a head,
              "hidden": 64,              # batch norm without scale, offsets not adapted,
              "n_classes": 5,            # Xavier convs and an N(0, 1) head (init "maml")
              "image_size": 28}

REPTILE_CONV4 = dict(MAML_CONV4,         # openai/supervised-reptile models.py OmniglotModel:
                     bn_scale=True,      # tf.layers.batch_normalization has a scale
                     flatten=True,       # 2 x 2 x 64 features flattened into the dense head
                     init="glorot",      # tf.layers' Glorot-uniform kernels
                     adapt_bn=True)      # the inner Adam trains every variable

CONV4_EMBEDDING = {"model": "conv4",
                   "in_channels": 1,     # grey-scale glyphs
                   "hidden": 64,         # Snell et al.'s embedding: four 64-filter blocks
                   "n_classes": None,    # no head: the output is the embedding
                   "image_size": 28}     # 28 x 28

CNP_MODEL = {"x_dim": 1, "y_dim": 1,     # scalar x and y (sinusoids)
             "r_dim": 64,                # size of the task representation r
             "encoder": [64, 64],        # h: (x, y) -> r_i, two hidden layers of 64
             "decoder": [64, 64]}        # g: (x, r) -> (mu, sigma), two hidden layers of 64

ICL_TRANSFORMER = {"width": 32,          # embedding width (Garg et al.: 256; sized for a CPU)
                   "depth": 3,           # 3 layers (Garg et al.: 12)
                   "heads": 4,           # 4 attention heads (Garg et al.: 8)
                   "positions": "learned",   # learned position embeddings (GPT-2)
                   "mlp_ratio": 4}       # MLP hidden = 4 x width (GPT-2)

# ---------------------------------------------------------------------------
# Outer optimisers
# ---------------------------------------------------------------------------
ADAM = {"name": "adam", "lr": 1e-3}      # Finn et al. and Snell et al.: Adam, beta = 1e-3
REPTILE_SGD = {"name": "sgd", "lr": 1.0}  # eps = 1: theta <- mean_i W_i (docs/reptile.md)

OMNIGLOT = ("omniglot", "omniglot-minimal")   # real handwriting: the reference code's recipes

# Small random affine distortions of each drawn training image (scratchmeta.tasks.augment);
# held-out episodes are never distorted. Ours: the reference codes do not augment beyond
# the 90-degree rotations (which are classes of their own, not distortions).
HANDWRITING_AUGMENT = {"rotation": 5.0,      # +-5 degrees
                       "scale": 0.05,        # size x U(0.95, 1.05)
                       "shear": 5.0,         # +-5 degrees of horizontal shear
                       "translate": 1.5}     # +-1.5 pixels along each axis

# ---------------------------------------------------------------------------
# Inner loops (MAML, FOMAML, Meta-SGD, ANIL)
# ---------------------------------------------------------------------------
SINE_INNER = {"inner_lr": 0.01,          # alpha = 0.01 (Finn et al. Sec. 5.1)
              "inner_steps": 1,          # one inner step when training (Finn et al. Sec. 5.1)
              "eval_inner_steps": 10}    # Finn et al. Fig. 2 fine-tunes up to 10 steps

FEW_SHOT_INNER = {"inner_lr": 0.4,       # alpha = 0.4 (Finn et al. Sec. 5.2, Omniglot)
                  "inner_steps": 1,      # one inner step when training (Finn et al. Sec. 5.2)
                  "eval_inner_steps": 3}  # our default at test time (eval's --inner-steps)

SINE_RUN = {"steps": 15000,              # Finn et al. ran 70,000; 15,000 fit a few CPU minutes
            "meta_batch": 25,            # 25 tasks a meta-batch (Finn et al. Sec. 5.1)
            "eval_every": 1000}          # held-out evaluation every 1,000 steps

OMNIGLOT_INNER = {"inner_lr": 0.4,       # alpha = 0.4 (cbfinn/maml main.py usage, 5-way 1-shot)
                  "inner_reduction": "sum/k",   # the code's loss: summed cross-entropy / K (utils.py xent)
                  "inner_steps": 1,      # --num_updates=1
                  "eval_inner_steps": 10}  # test_num_updates = 10 at test time (main.py)

FEW_SHOT_RUN = {"steps": 2000,           # sized to a CPU (Finn et al. train 60,000 steps)
                "meta_batch": 4,         # Finn et al. use 32 tasks; 4 fit a CPU
                "eval_every": 500}       # held-out evaluation every 500 steps


def _maml_family(task, first_order=False, **algo):
    """MAML's recipe on `task`; Meta-SGD and ANIL use the same values (algo adds theirs)."""
    if task == "sinusoid":
        return {"task": SINE_TASK, "model": SINE_MLP,
                "algo": dict(SINE_INNER, first_order=first_order, **algo),
                "optimizer": ADAM, **SINE_RUN}
    if task in OMNIGLOT:      # the reference code's network, initialisation and loss scale
        return {"task": dict(FEW_SHOT_TASK, name=task), "model": MAML_CONV4,
                "algo": dict(OMNIGLOT_INNER, first_order=first_order, **algo),
                "optimizer": ADAM, **FEW_SHOT_RUN}
    # glyphs and digits (our stand-ins): Conv4, mean loss, as docs/results.md measured
    return {"task": dict(FEW_SHOT_TASK, name=task), "model": CONV4,
            "algo": dict(FEW_SHOT_INNER, first_order=first_order, **algo),
            "optimizer": ADAM, **FEW_SHOT_RUN}


def _reptile(task):
    """Reptile: SGD outer step with lr = eps, so the update is Algorithm 2's literally."""
    if task == "sinusoid":
        # inner_lr 0.02 and 5 steps follow the sine-wave demo published with the paper
        # (gist joschu/f503500cda64f2ce87c8288906b09e2d); eps = 1 reached a lower
        # 10-step MSE than eps = 0.1 or Adam(1e-3) after 2,000 steps (docs/reptile.md)
        return {"task": SINE_TASK, "model": SINE_MLP,
                "algo": {"inner_lr": 0.02,           # the demo's inner step
                         "inner_steps": 5,           # one epoch of 10-point minibatches over 50 points
                         "eval_inner_steps": 10},    # as MAML's Fig. 2
                "optimizer": REPTILE_SGD, **SINE_RUN}
    if task in OMNIGLOT:      # openai/supervised-reptile README, 1-shot 5-way Omniglot
        return {"task": dict(FEW_SHOT_TASK, name=task), "model": REPTILE_CONV4,
                "algo": {"inner_optimizer": "adam",  # Adam with beta1 = 0 (models.py)
                         "inner_lr": 1e-3,           # --learning-rate 0.001
                         "inner_steps": 5,           # --inner-iters 5
                         "inner_batch": 10,          # --inner-batch 10
                         "train_shots": 10,          # --train-shots 10: 50 images, one epoch
                         "train_queries": 1,         # ours: a query only to report a loss
                         "eval_inner_steps": 50,     # --eval-iters 50
                         "eval_inner_batch": 5},     # --eval-batch 5
                "optimizer": {"name": "sgd", "lr": 1.0,   # --meta-step 1
                              "final_lr": 0.0},           # --meta-step-final 0: linear to 0
                "steps": 2000,               # ours: a CPU budget (reference --meta-iters 100000)
                "meta_batch": 5,             # --meta-batch 5
                "eval_every": 500}
    # glyphs and digits: plain SGD (Eq. 1), alpha as MAML's, as docs/results.md measured
    return {"task": dict(FEW_SHOT_TASK, name=task), "model": CONV4,
            "algo": {"inner_lr": 0.4,                # MAML's Omniglot alpha
                     "inner_steps": 5,               # k = 5 inner steps
                     "eval_inner_steps": 5},         # as many at test time
            "optimizer": REPTILE_SGD, **FEW_SHOT_RUN}


def _metric(task, algorithm):
    """ProtoNet / Matching Nets: Conv4-64 embedding, Adam 1e-3, 5-way, one episode a step."""
    algo = {"train_ways": None,          # train on the test's n_way unless the row says otherwise
            "train_queries": None}       # and on its n_query
    if algorithm == "protonet":
        algo = dict(distance="euclidean",    # squared Euclidean (Snell et al. Eq. 2)
                    fused_loss=False,        # the composite loss (True: the hand-derived VJP)
                    **algo)
    recipe = {"task": dict(FEW_SHOT_TASK, name=task), "model": CONV4_EMBEDDING, "algo": algo,
              "optimizer": ADAM,
              "steps": 1000, "meta_batch": 1, "eval_every": 250,   # one episode a step (Snell et al.)
              "dtype": "float32"}                                   # float32: Conv4 at CPU speed
    if task == "glyphs":
        recipe["algo"] = dict(algo, train_queries=5)   # 30 images a 1-shot step, ~0.25 s on 2 cores
        recipe.update(steps=600, eval_every=300)       # ~3 minutes
    if task in OMNIGLOT and algorithm == "protonet":
        recipe["algo"] = dict(algo, train_ways=60, train_queries=5)   # Snell et al.: 60-way, 5 queries
        # StepLR(gamma=0.5) every 20 epochs of 100 episodes (jakesnell/prototypical-networks)
        recipe["optimizer"] = dict(ADAM, halve_every=2000)
        recipe.update(steps=20000, eval_every=2000)
    if task in OMNIGLOT and algorithm == "matching":
        # oscarknagg/few-shot experiments/matching_nets.py: 5-way 15-query training episodes
        recipe["algo"] = dict(algo, train_ways=5, train_queries=15)
        recipe.update(steps=10000, eval_every=1000)    # 100 epochs of 100 episodes
    if task == "omniglot-minimal":
        recipe.update(steps=600, eval_every=300)       # ours: a 15-minute CPU budget on 2 cores
    if task == "omniglot-minimal" and algorithm == "protonet":
        # What differs from jakesnell/prototypical-networks (docs/recipes.md), and why:
        # - 20-way 5-query training episodes, not 60-way (run_train.py:L14): at equal CPU
        #   time 20-way and 60-way gave the same held-out error here, and 20-way steps
        #   are 3x cheaper (docs/results.md);
        # - 3,600 steps, not up to 10,000 epochs of 100 episodes with early stopping:
        #   sized to 15 CPU minutes on 2 cores (about 0.18 CPU s a step);
        # - a constant rate: the reference halves it every 2,000 episodes (run_train.py:L52),
        #   which at 3,600 steps would halve once; at equal CPU that did not lower the
        #   held-out error here (35.7 vs 35.4 %, docs/results.md), so the rate stays 1e-3;
        # - training images randomly distorted (HANDWRITING_AUGMENT), which the reference
        #   does not do: 5 training alphabets hold only 179 characters x 20 drawings;
        #   at equal CPU it lowered the held-out error by 1.5 points, inside the CI
        #   (docs/results.md), at no measurable cost; stronger affine maps, elastic distortion
        #   and stroke-width jitter (tasks.augment.Distortion) did not beat it by more than
        #   the CI either (docs/results.md, issue 13's second round), so the mild one stays
        recipe["task"]["augment"] = dict(HANDWRITING_AUGMENT)
        recipe["algo"] = dict(recipe["algo"], train_ways=20, train_queries=5)
        recipe["optimizer"] = dict(ADAM)
        recipe.update(steps=3600, eval_every=900)
    if task == "digits":
        recipe["algo"] = dict(algo, train_queries=5)   # 5 training queries a class
        recipe.update(steps=300, eval_every=100)       # 8x8 digits: a small set, a short run
    return recipe


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------
CLASSIFICATION = ("glyphs", "omniglot", "omniglot-minimal", "digits")

RECIPES = {}
for _task in ("sinusoid",) + CLASSIFICATION:
    RECIPES[("maml", _task)] = _maml_family(_task)                      # Finn et al. 2017
    RECIPES[("fomaml", _task)] = _maml_family(_task, first_order=True)  # Finn et al. Sec. 5.2
    RECIPES[("metasgd", _task)] = _maml_family(_task, learn_lr=True)    # Li et al.: MAML's values, rates learned
    RECIPES[("anil", _task)] = _maml_family(_task)                      # Raghu et al.: MAML's values
    RECIPES[("reptile", _task)] = _reptile(_task)                       # Nichol et al. 2018
for _task in CLASSIFICATION:
    RECIPES[("protonet", _task)] = _metric(_task, "protonet")           # Snell et al. 2017
    RECIPES[("matching", _task)] = _metric(_task, "matching")           # Vinyals et al. 2016

RECIPES[("cnp", "sinusoid")] = {                 # Garnelo et al. 2018 on MAML's sinusoids
    "task": SINE_TASK, "model": CNP_MODEL,
    "algo": {"random_context": True,             # a random context size each step (Garnelo et al. Sec. 3)
             "seed": 0},                         # the RNG of those sizes
    "optimizer": ADAM,
    "steps": 20000,                              # 20,000 steps (docs/cnp.md compares it with MAML)
    "meta_batch": 32,                            # 32 functions a step
    "eval_every": 2000}                          # held-out evaluation every 2,000 steps

RECIPES[("icl", "linreg")] = {                   # Garg et al. 2022, in-context linear regression
    "task": LINREG_TASK, "model": ICL_TRANSFORMER,
    "algo": {"baselines": ["least_squares", "ridge", "knn", "averaging", "gd_one_step"],  # Garg et al. Fig. 2
             "n_neighbors": 3,                   # k of the k-NN baseline (Garg et al.)
             "ridge_grid": [1e-06, 0.0001, 0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],  # ridge's lambda, tuned
             "tune_prompts": 1000},              # prompts used to tune the baselines
    # Garg et al. (src/train.py:39, src/conf/base.yaml:13): Adam at a constant 1e-4 for 500,001
    # steps of a 12-layer model. Ours: a small model on a CPU budget, so a higher peak rate
    # (2e-3) with a 500-step linear warm-up and a cosine decay to 0 at the run's last step
    "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.0,    # no weight decay
                  "warmup_steps": 500, "schedule": "cosine"},
    "steps": 12000,                              # ours, CPU-sized: 0.033 at k = 2d (docs/icl.md)
    "meta_batch": 64,                            # 64 prompts a step (Garg et al.)
    "eval_every": 1000,                          # held-out evaluation every 1,000 steps
    "dtype": "float32"}                          # float32: the transformer at CPU speed


def recipe(algorithm, task):
    """A fresh copy of the default config of `algorithm` on `task` (ValueError if none)."""
    if (algorithm, task) not in RECIPES:
        tasks = sorted(t for a, t in RECIPES if a == algorithm)
        if not tasks:
            raise ValueError(f"no recipe for algorithm {algorithm!r}; known: "
                             f"{sorted({a for a, _ in RECIPES})}")
        raise ValueError(f"{algorithm}: no default config for task {task!r}; choose one of {tasks}")
    return copy.deepcopy(RECIPES[(algorithm, task)])
