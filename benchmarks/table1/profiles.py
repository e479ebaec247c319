"""Table 1's settings: the methods, each data set's profiles (budget, grid, recipe), the recipes'
per-method hyperparameters and adaptation candidates, and the pre-registered choices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METHODS = ["transfer", "protonet", "mtl-protonet", "reptile", "mtl-reptile", "maml", "mtl-maml",
           "fomaml", "mtl-fomaml"]
PAPER_COLUMNS = {"transfer": "Transfer", "protonet": "ProtoNet", "mtl-protonet": "MTL-ProtoNet",
                 "reptile": "Reptile", "mtl-reptile": "MTL-Reptile", "maml": "MAML", "mtl-maml": "MTL-MAML",
                 "fomaml": "FOMAML", "mtl-fomaml": "MTL-FOMAML"}
UNSEEN_CLASSES = {
    "omniglot": "Omniglot evaluation alphabets (659 characters)",
    "omniglot-vinyals": "Omniglot Vinyals test split (423 characters x 4 rotations = 1692 classes)",
    "miniimagenet-lite": "miniImageNet-lite val + test (36 classes)",
    "miniimagenet-lite-ravi": "miniImageNet-lite test (20 classes)",
}


@dataclass
class Profile:
    image_size: int
    channels: int
    filters: int
    budget_passes: int  # image forward+backward passes per method
    episodes: int
    ways: list[int]
    shots: list[int]
    max_shot_queries: int  # queries per class in the largest-shot cell
    adapt_batch: int = 64  # cap on images per adaptation step, so 35-way 100-shot stays affordable
    common: dict[str, Any] = field(default_factory=dict)
    # Which per-method settings (RECIPES): "legacy" reproduces the first Table 1 runs, "fair" the
    # settings each method won on validation classes (tuning-omniglot-fair.jsonl).
    recipe: str = "legacy"
    # Pretrain without validation classes and score those every `validate_every` passes (the
    # training curve; also where each base model's adaptation is chosen): Omniglot's 6 validation
    # alphabets of benchmarks/tune.py, the Vinyals val split, miniImageNet-lite's 16 held-out
    # train classes.
    holdout_validation: bool = False
    validate_every: int = 0
    # Omniglot background characters turned by 90, 180 and 270 degrees as base classes of their
    # own (4x the classes); validation and unseen classes stay as drawn.
    rotations: bool = False
    # Episodes a cell at 100 shots or more (0: `episodes`): a 35-way 100-shot episode fine-tunes
    # on 3,500 images.
    many_shot_episodes: int = 0
    # Episodes of the adaptation choice at the largest validation cell (`choose_adaptation`).
    choice_large_episodes: int = 50
    # Settings of single methods on top of the recipe's (docs/preregistration.md: chosen on
    # validation classes); the key "rotations" turns that method's base classes (only).
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)

    def episodes_for(self, shots: int) -> int:
        return self.many_shot_episodes if shots >= 100 and self.many_shot_episodes else self.episodes

    def method_rotations(self, method: str) -> bool:
        return bool(self.per_method.get(method, {}).get("rotations", self.rotations))


# docs/preregistration.md's choices made on validation classes (benchmarks/prereg_sweep.py), each
# entered by the version of it named in PREREG_VERSION; a prereg run of a method with no entry
# here is refused.
PREREG_VERSION = "1.4"
PREREG_METHODS = ["transfer", "protonet", "mtl-protonet", "mtl-reptile"]
PREREG_CHOICES: dict[str, dict[str, dict[str, Any]]] = {
    "omniglot": {
        "transfer": {"ways": 5, "rotations": True},  # 93.29 vs 92.05 without
        "protonet": {"ways": 20, "rotations": False},  # 94.11; 5 ways 92.68, with rotations 93.87
        "mtl-reptile": {"ways": 5, "rotations": False},  # 92.91 vs 89.23 with
        # 92.96; 5 ways 92.08, 5 ways + rotations 91.99, 20 ways + rotations 92.19 (version 1.4)
        "mtl-protonet": {"ways": 20, "rotations": False},
    },
    "miniimagenet-lite": {},
}
PREREG_PROFILES = ("prereg", "prereg-long")

PROFILES: dict[tuple[str, str], Profile] = {
    # Seconds, for the test suite: checks the harness end to end, measures nothing.
    ("omniglot", "smoke"): Profile(28, 1, 8, budget_passes=1_500, episodes=3, ways=[5],
                                   shots=[1, 15], max_shot_queries=5),
    # Sized to run in well under an hour on 2 busy CPU cores: 35-way is left to `full`.
    ("omniglot", "quick"): Profile(28, 1, 32, budget_passes=100_000, episodes=40, ways=[5, 20],
                                   shots=[1, 5, 15], max_shot_queries=5),
    # Every cell of the grid (35-way too) and all eight methods, with as many episodes as
    # 2 CPU cores afford in about 2 hours (two processes, methods split between them: see
    # `--merge`); the quick profile's models and budget, 2.5x its episodes.
    ("omniglot", "cpu"): Profile(28, 1, 32, budget_passes=100_000, episodes=100, ways=[5, 20, 35],
                                 shots=[1, 5, 15], max_shot_queries=5),
    # As the issue sets it (600 episodes, 35-way). NOT a few hours on 2 CPU cores: the quick run's
    # own timings (adaptation of 40 episodes per cell, 1 thread, shared machine) project about
    # 2.5-4 hours of evaluation per fine-tuned method, ~20 core-hours for the seven, before
    # pretraining 3M passes each. Meant for a GPU, or a long background run.
    ("omniglot", "full"): Profile(28, 1, 64, budget_passes=3_000_000, episodes=600, ways=[5, 20, 35],
                                  shots=[1, 5, 15], max_shot_queries=5),
    # The split the few-shot literature reports on (Vinyals et al. 2016; base classes: trainval,
    # 1200 characters x 4 rotations; unseen: test, 423 x 4), at its grid of 5/20-way 1/5-shot.
    # The omniglot profiles' settings otherwise. Published on this split (%, 5-way 1-shot,
    # 5-way 5-shot, 20-way 1-shot, 20-way 5-shot; larger 64-filter models, far larger budgets):
    # ProtoNet (Snell et al. 2017) 98.8, 99.7, 96.0, 98.9; MAML (Finn et al. 2017) 98.7, 99.9,
    # 95.8, 98.9.
    ("omniglot-vinyals", "smoke"): Profile(28, 1, 8, budget_passes=1_500, episodes=3, ways=[5, 20],
                                           shots=[1, 5], max_shot_queries=5),
    # The fair recipe on the Vinyals split: pretrain on its train split, validate on its val split.
    ("omniglot-vinyals", "fair"): Profile(28, 1, 32, budget_passes=400_000, episodes=100, ways=[5, 20],
                                          shots=[1, 5], max_shot_queries=15, recipe="fair",
                                          holdout_validation=True, validate_every=100_000),
    # The Vinyals train split is 4112 classes (82,240 images, 5x the background alphabets'), and
    # at 400,000 passes ProtoNet's validation curve was still rising (88.7 -> 94.0 -> 95.7 ->
    # 96.1, runs of 2026-12-05): four times the budget, the curve every 400,000 passes.
    ("omniglot-vinyals", "fair-long"): Profile(28, 1, 32, budget_passes=1_600_000, episodes=100,
                                               ways=[5, 20], shots=[1, 5], max_shot_queries=15,
                                               recipe="fair", holdout_validation=True,
                                               validate_every=400_000),
    ("omniglot-vinyals", "cpu"): Profile(28, 1, 32, budget_passes=100_000, episodes=100, ways=[5, 20],
                                         shots=[1, 5], max_shot_queries=5),
    # What 2 CPU cores afford in about an hour per data set: an 84x84 image pass costs ~10x an
    # Omniglot one, and a 100-shot episode needs 20 epochs over 500-3500 images, so the 100-shot
    # and 35-way cells are left to `full` and `gpu`.
    # The fair fight: every method with the settings it won on validation alphabets, the
    # validation alphabets held out of pretraining so that each run draws its own training curve,
    # at a budget where the curves flatten (benchmarks/results/table1-omniglot-fair/plateau.png).
    ("omniglot", "fair"): Profile(28, 1, 32, budget_passes=400_000, episodes=100, ways=[5, 20],
                                  shots=[1, 5], max_shot_queries=15, recipe="fair",
                                  holdout_validation=True, validate_every=100_000),
    # The fair profile's pretraining scored in all nine cells of the paper's grid (a 15-shot task
    # leaves 5 of a character's 20 drawings to query; adaptation chosen at 5-way 1-shot and
    # 35-way 15-shot).
    ("omniglot", "fair-grid"): Profile(28, 1, 32, budget_passes=400_000, episodes=100,
                                       ways=[5, 20, 35], shots=[1, 5, 15], max_shot_queries=5,
                                       recipe="fair", holdout_validation=True,
                                       validate_every=100_000),
    # The built-in `handwriting` model's candidates (issue 11): ProtoNet, the fair run's best on
    # the validation alphabets, as Snell et al. train it on Omniglot (more ways per training
    # episode than tested, rotated characters as extra classes) at 32 and 64 filters, each for
    # about an hour of one core (2,000 and 600 passes/s at 20-way, 1 thread, quiet machine).
    ("omniglot", "builtin"): Profile(28, 1, 32, budget_passes=6_000_000, episodes=100, ways=[5, 20],
                                     shots=[1, 5], max_shot_queries=15, recipe="fair",
                                     common={"ways": 20}, holdout_validation=True,
                                     validate_every=1_000_000, rotations=True),
    ("omniglot", "builtin-wide"): Profile(28, 1, 64, budget_passes=2_000_000, episodes=100, ways=[5, 20],
                                          shots=[1, 5], max_shot_queries=15, recipe="fair",
                                          common={"ways": 20}, holdout_validation=True,
                                          validate_every=400_000, rotations=True),
    # The `handwriting` model's MTL candidate (issue 27): MTL-ProtoNet with the handwriting recipe
    # above and the beta that won its sweep on the validation alphabets at 2M passes
    # (benchmarks.builtin_sweep: 0.5 93.94, 0.75 93.80, 0.9 94.36;
    # benchmarks/results/builtin-sweep/omniglot-mtl-protonet.json).
    ("omniglot", "builtin-mtl"): Profile(28, 1, 32, budget_passes=6_000_000, episodes=100, ways=[5, 20],
                                         shots=[1, 5], max_shot_queries=15, recipe="fair",
                                         common={"ways": 20}, holdout_validation=True,
                                         validate_every=1_000_000, rotations=True,
                                         per_method={"mtl-protonet": {"beta": 0.9}}),
    ("omniglot", "fair-smoke"): Profile(28, 1, 8, budget_passes=1_500, episodes=3, ways=[5],
                                        shots=[1], max_shot_queries=15, recipe="fair",
                                        holdout_validation=True, validate_every=750),
    ("miniimagenet-lite", "quick"): Profile(84, 3, 32, budget_passes=30_000, episodes=30,
                                            ways=[5, 20], shots=[1, 5], max_shot_queries=15,
                                            common={"augment": True}),
    ("miniimagenet-lite", "full"): Profile(84, 3, 32, budget_passes=600_000, episodes=600,
                                           ways=[5, 20, 35], shots=[1, 5, 100], max_shot_queries=20,
                                           common={"augment": True}),
    # The fair recipe on natural images: the settings each method won on Omniglot's validation
    # alphabets (no sweep of its own on miniImageNet-lite: equal, and smaller, tuning effort for
    # every method), 16 of the 64 train classes held out for the training curves and the choice
    # of adaptation, ~52 epochs over the other 48 classes' 5,760 images. An 84x84 pass costs ~20x
    # an Omniglot one on this CPU (265 vs 5,500 passes/s, 1 thread, Conv-4/32), so 300,000 passes
    # is 20-30 minutes a method; the 100-shot cell (10,000 fine-tuning passes an episode) is left out.
    ("miniimagenet-lite", "fair"): Profile(84, 3, 32, budget_passes=300_000, episodes=100,
                                           ways=[5, 20], shots=[1, 5], max_shot_queries=15,
                                           common={"augment": True}, recipe="fair",
                                           holdout_validation=True, validate_every=75_000),
    # The built-in `natural` model's candidate (issue 11): ProtoNet (tied with MTL-ProtoNet on the
    # fair run's deciding validation cell, at a third less compute a pass) with 20 ways per
    # training episode, as Snell et al. found more ways than tested to pay on miniImageNet.
    ("miniimagenet-lite", "builtin"): Profile(84, 3, 32, budget_passes=400_000, episodes=100,
                                              ways=[5, 20], shots=[1, 5], max_shot_queries=15,
                                              common={"augment": True, "ways": 20}, recipe="fair",
                                              holdout_validation=True, validate_every=100_000),
    # The built-in `natural` model as issue 27 asks: MTL-ProtoNet (the fair recipe's, beta 0.75;
    # 20-way episodes for its meta half, as the builtin profile) on all 64 train classes, every
    # choice on the 16 val classes, scored on the 20 test classes only. bf16 pretraining and
    # adaptation (2-2.4x faster at 84x84, within about a point of fp32 in issue 25's gate: the
    # card says so); validated every 200,000 passes to see where the curve flattens.
    ("miniimagenet-lite-ravi", "builtin-mtl"): Profile(84, 3, 32, budget_passes=1_000_000, episodes=100,
                                                       ways=[5, 20], shots=[1, 5, 20], max_shot_queries=15,
                                                       common={"augment": True, "ways": 20, "precision": "bf16"},
                                                       recipe="fair", holdout_validation=True,
                                                       validate_every=200_000),
    # docs/preregistration.md (issue 26): the paper's grid, 200 seeded episodes a cell (20 at 100
    # shots), seeds 0-2 through --seed; the per-method choices (training ways, rotations) come from
    # its validation sweep (benchmarks/prereg_sweep.py) and are entered in PREREG_CHOICES.
    ("omniglot", "prereg"): Profile(28, 1, 32, budget_passes=400_000, episodes=200, ways=[5, 20, 35],
                                    shots=[1, 5, 15], max_shot_queries=5, recipe="fair",
                                    holdout_validation=True, validate_every=100_000,
                                    per_method=PREREG_CHOICES["omniglot"]),
    ("omniglot", "prereg-long"): Profile(28, 1, 32, budget_passes=1_600_000, episodes=200,
                                         ways=[5, 20, 35], shots=[1, 5, 15], max_shot_queries=5,
                                         recipe="fair", holdout_validation=True,
                                         validate_every=400_000, per_method=PREREG_CHOICES["omniglot"]),
    ("miniimagenet-lite", "prereg"): Profile(84, 3, 32, budget_passes=300_000, episodes=200,
                                             many_shot_episodes=20, choice_large_episodes=10,
                                             ways=[5, 20, 35], shots=[1, 5, 100], max_shot_queries=20,
                                             common={"augment": True}, recipe="fair",
                                             holdout_validation=True, validate_every=75_000,
                                             per_method=PREREG_CHOICES["miniimagenet-lite"]),
    ("miniimagenet-lite", "prereg-long"): Profile(84, 3, 32, budget_passes=600_000, episodes=200,
                                                  many_shot_episodes=20, choice_large_episodes=10,
                                                  ways=[5, 20, 35], shots=[1, 5, 100],
                                                  max_shot_queries=20, common={"augment": True},
                                                  recipe="fair", holdout_validation=True,
                                                  validate_every=150_000,
                                                  per_method=PREREG_CHOICES["miniimagenet-lite"]),
    # One H100 in about 10 minutes: see benchmarks/gpu_table1.sh.
    ("miniimagenet-lite", "gpu"): Profile(84, 3, 64, budget_passes=3_000_000, episodes=200,
                                          ways=[5, 20, 35], shots=[1, 5, 100], max_shot_queries=20,
                                          common={"augment": True}),
}

# The first Table 1 runs' settings ("legacy"): PretrainConfig's defaults of the time (measured on
# held-out Omniglot alphabets for MTL-Reptile only), shared by the baselines so that only the
# algorithm differs, with no annealing (that was one of the experiment's defects).
LEGACY_BASE: dict[str, Any] = {"ways": 5, "shots": 5, "queries": 5, "meta_batch": 1,
                               "inner_steps": 5, "inner_lr": 0.1, "transfer_lr": 0.2,
                               "outer_lr": 1.0, "beta": 0.5, "combine": "paper",
                               "meta_schedule": "constant"}
LEGACY_METHODS: dict[str, dict[str, Any]] = {m: {} for m in METHODS}
# MAML's outer step is a gradient step, not Reptile's move toward the adapted weights, so
# outer_lr 1.0 is a learning rate of 1: FOMAML on validation alphabets (5-way 1-shot, 100k
# passes) reached 82.0% at 0.1, 80.6% at 0.3 and chance (20.6%) at 1.0
# (benchmarks/results/tuning-omniglot-maml-outer-lr.jsonl).
for _m in ("maml", "fomaml", "mtl-maml", "mtl-fomaml"):
    LEGACY_METHODS[_m] = {"outer_lr": 0.1}
# How each method's base model adapts at test time (protonet: nearest class mean, no steps).
# min_epochs: many-shot tasks get more steps, so that every support image is seen 20 times
# (20-way 15-shot on validation alphabets: benchmarks/results/tuning-omniglot-min-epochs.jsonl).
LEGACY_ADAPTATION: dict[str, dict[str, Any]] = {
    m: {"steps": 30, "lr": 0.1, "min_epochs": 20, "head_init": "zeros", "bn_stats": "support"}
    for m in METHODS
}
LEGACY_ADAPTATION["protonet"] = {"steps": 0, "lr": 0.0, "head_init": "prototype", "bn_stats": "frozen"}

# "fair": each method with what it won on the 6 validation alphabets at 200,000 passes
# (benchmarks/tune_fair.sh, rows in benchmarks/results/tuning-omniglot-fair.jsonl; README).
FAIR_BASE: dict[str, Any] = {"ways": 5, "shots": 5, "queries": 5, "inner_steps": 5, "inner_lr": 0.1,
                             "combine": "paper", "meta_schedule": "linear"}
# The supervised recipe, for Transfer and every MTL variant's transfer half.
SUPERVISED: dict[str, Any] = {"transfer_batch": 64, "momentum": 0.9, "weight_decay": 5e-4,
                              "transfer_schedule": "cosine", "transfer_head": "standard",
                              "transfer_lr": 0.1}
FAIR_METHODS: dict[str, dict[str, Any]] = {
    "transfer": SUPERVISED,
    "protonet": {"meta_batch": 1, "protonet_lr": 0.003},
    "mtl-protonet": {**SUPERVISED, "meta_batch": 1, "protonet_lr": 0.001, "beta": 0.75},
    "reptile": {"meta_batch": 1, "outer_lr": 1.0},
    "mtl-reptile": {**SUPERVISED, "meta_batch": 1, "outer_lr": 1.0, "beta": 0.5},
    "maml": {"meta_batch": 4, "outer_lr": 0.1, "inner_steps": 1},
    "mtl-maml": {**SUPERVISED, "meta_batch": 4, "outer_lr": 0.1, "inner_steps": 1, "beta": 0.5},
    "fomaml": {"meta_batch": 4, "outer_lr": 0.1},
    # beta swept 0.25 / 0.5 / 0.75 on the validation alphabets (2026-12-05): 77.8 / 79.5 / 83.4
    # for MTL-FOMAML (0.75 won), 88.2 / 88.7 / 83.8 for MTL-Reptile (0.5 kept).
    "mtl-fomaml": {**SUPERVISED, "meta_batch": 4, "outer_lr": 0.1, "beta": 0.75},
}
# Which adaptation suits a base model depends on how it was trained (on validation alphabets,
# Reptile: 82.0% fine-tuning a zero head vs 78.2% from the prototype head; Transfer and ProtoNet
# the other way round), so each base model gets the best of these three on its validation classes
# (mean over `choice_cells`: the profile's smallest and largest tasks), chosen after its
# pretraining and recorded in the report.
FINE_TUNE: dict[str, Any] = {"steps": 30, "lr": 0.1, "min_epochs": 20, "bn_stats": "support"}
FAIR_CANDIDATES: list[dict[str, Any]] = [
    {**FINE_TUNE, "head_init": "zeros"},
    {**FINE_TUNE, "head_init": "prototype", "prototype_scale": 10.0},
    {"steps": 0, "lr": 0.0, "head_init": "prototype", "bn_stats": "frozen"},
]
FAIR_ADAPTATION: dict[str, list[dict[str, Any]]] = {m: FAIR_CANDIDATES for m in METHODS}

# recipe -> (shared settings, per-method settings, per-method adaptation candidates)
RECIPES: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]] = {
    "legacy": (LEGACY_BASE, LEGACY_METHODS, {m: [a] for m, a in LEGACY_ADAPTATION.items()}),
    "fair": (FAIR_BASE, FAIR_METHODS, FAIR_ADAPTATION),
}


def method_config(method: str, profile: Profile) -> Any:
    from models.config import PretrainConfig

    base, per_method, _ = RECIPES[profile.recipe]
    chosen = {k: v for k, v in profile.per_method.get(method, {}).items() if k != "rotations"}
    spec = {**base, **profile.common, **per_method[method], **chosen, "algorithm": method,
            "image_size": profile.image_size, "channels": profile.channels, "filters": profile.filters,
            "iterations": 1}
    config = PretrainConfig(**spec)
    config.iterations = max(1, profile.budget_passes // config.passes_per_iteration())
    return config
