"""Pruning policies that step through :mod:`prune_env` (LLM agents and heuristic baselines).

``policies.app`` is the application layer (command line, experiment jobs, reports); nothing else in the
project imports it.
"""
