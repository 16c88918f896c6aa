"""lm-eval tasks that score pruned models (factual knowledge, MMLU, perplexity)."""
