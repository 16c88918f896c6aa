"""Heuristic baselines that step through PruningEnv like the agent: uniform, OWL, greedy, search, structured.

One module per family; the pure math (allocations, OWL's formula, block choice) is separate from the
policies that walk the env. Make them by name with :func:`policies.registry.make_policy`.
"""
