"""The tiny grid the sweep tests run (the embedded digits data, the fastest
settings of the training tests)."""

from pml_soproxy.training.config import SCHEMA

#: fixed values of every run: 2 epochs of 1 iteration, on the CPU, no loader workers
FIXED = dict(epochs=2, iterations_per_epoch=1, num_workers=0, device="cpu")
FLAGS = ["--epochs", "2", "--iterations-per-epoch", "1", "--num-workers", "0",
         "--device", "cpu"]  # fmt: skip
if "figures" in SCHEMA:  # the run's own figures: not what these tests check
    FIXED["figures"] = False
    FLAGS.append("--no-figures")
# the third axis: the loss where the config has that key, else the embedder
if "loss" in SCHEMA:
    THIRD_KEY, THIRD_VALUES = "loss", ["proxy_anchor", "proxy_nca"]
else:
    THIRD_KEY, THIRD_VALUES = "embedding_size", [0, 16]
THIRD_AXIS = f"{THIRD_KEY}={','.join(str(v) for v in THIRD_VALUES)}"
GRID_FLAGS = ["--grid", "so_weight=0,1", "--grid", "seed=0,1", "--grid", THIRD_AXIS]
