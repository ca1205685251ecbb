"""Sampling completions: the engine protocol and its engines, the sampler that renders prompts,
samples G completions each and scores them, dynamic sampling, and the seed streams.
"""
