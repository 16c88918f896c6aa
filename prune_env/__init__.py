"""prune_env: models, text, calibration, pruning kernels and measurements for pruning causal LMs.

The main entry points are :func:`prune_env.models.load_model`, :func:`prune_env.text.build_token_sets`,
:func:`prune_env.structure.discover`, :func:`prune_env.pruner.make_spec` / :func:`prune_env.pruner.prune`,
:func:`prune_env.perplexity.perplexity` and :func:`prune_env.sparsity.sparsity_report`.
"""

__version__ = "0.1.0"
