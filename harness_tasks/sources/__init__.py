"""Readers for the packaged data behind the offline tasks (Red-Trivia, gensim, lm-eval, Wikipedia text)."""
