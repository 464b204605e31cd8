"""The native recipe: a DeiT trunk trained with SO Proxy Anchor through PML's trainer,
tester and hooks, assembled from one config.

Model selection uses a class-disjoint validation split carved from the training
classes (or, with ``val_fraction: 0``, the last epoch); the test split is only
evaluated once, at the end, with the selected weights.

config/         the one config schema: defaults, checks, YAML layers, CLI flags
builder.py      data, sampler, optimizers, schedulers, tester (train AND evaluate)
model.py        trunk, embedder, transforms, loss, class weights, strict loading
loading.py      the training data loader: auto workers, per-sample RNG, device copies
checkpoints.py  safe save/load (safetensors, weights_only), atomic writes, RNG state,
                file SHA-256
samplers.py     PML's M-per-class sampler with its order in the checkpoint
selection.py    the validation-selected epoch, early stopping
trainer.py      PML's MetricLossOnly with the recipe's loop (fp16, NaN check, rank 0 bars)
run.py          the run: build, train with selection, one test, results.json
run_folder.py   the run folder: clobber and resume checks, --overwrite, interrupts,
                logs, skipped images, test figures
evaluate.py     re-run the test of a saved run
demo.py         Proxy Anchor with and without SO, side by side
"""

from .checkpoints import BEST_WEIGHTS, CHECKPOINT, RESULTS, CheckpointError
from .config import (
    ConfigError,
    TrainConfig,
    add_config_arguments,
    load_config,
    resolve_config,
)
from .evaluate import evaluate_run, write_evaluation
from .run import Run, train
from .trainer import NonFiniteLossError
