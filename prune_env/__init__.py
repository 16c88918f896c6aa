"""prune_env: models, text, calibration, pruning kernels and measurements for pruning causal LMs.

The main entry points are :func:`prune_env.models.load_model`, :func:`prune_env.text.build_token_sets`,
:func:`prune_env.structure.discover`, :func:`prune_env.pruner.make_spec` / :func:`prune_env.pruner.prune`,
:func:`prune_env.perplexity.perplexity` and :func:`prune_env.sparsity.sparsity_report`.
"""

__version__ = "0.1.0"

from gymnasium.envs.registration import register as _register
from gymnasium.envs.registration import registry as _registry

ENV_ID = "prune_env/Pruning-v0"

if ENV_ID not in _registry:  # registered on import; the entry point module is only imported by gymnasium.make
    _register(id=ENV_ID, entry_point="prune_env.env:make_pruning_env")
