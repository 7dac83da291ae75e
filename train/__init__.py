"""avemo.train: the model (torch), feature cache, training regimes, metrics, evaluation, the study and its report.

Submodules that need torch import it themselves; the cache and synthetic-data
code stay torch-free so that ``avemo prepare`` runs without it.
"""
