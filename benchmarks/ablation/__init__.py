"""Pieces of the CUB-100 ablation shared by ``ablation_cub100.py`` (CPU, cached
activations) and ``ablation_cub100_gpu.py`` (full fine-tuning on a GPU).

recipe.py  one training run through the package recipe's public pieces
stats.py   paired statistics, validation-only selection of so_weight, summaries
"""
