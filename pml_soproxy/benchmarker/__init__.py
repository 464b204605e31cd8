"""powerful-benchmarker (PB) 0.9.33 with this project's loss, DeiT trunk, datasets
and Recall@K: the "Metric Learning Reality Check" protocol (class-disjoint
cross-validation folds, model selection on validation, MAP@R, ensembles).

PB pins PML 0.9.92 and record-keeper 0.9.29; it is installed with ``--no-deps``
(``requirements/benchmarker.txt``) and bridged to PML 2.x by :mod:`.compat`.

    python -m pml_soproxy.benchmarker --preset cub200 --dataset_root /data \\
        --experiment_name cub_so
    pml-soproxy benchmark ...   # the same

See the README's powerful-benchmarker section for the commands per dataset.
"""

from .runner import CONFIG_DIR, PRESETS, build_runner, expand_preset, main

__all__ = ["CONFIG_DIR", "PRESETS", "build_runner", "expand_preset", "main"]
