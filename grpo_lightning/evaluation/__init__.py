"""Validation, test and prediction: greedy and sampled completions scored by the accuracy reward,
pass@k / maj@k metrics, and evaluating a saved model without a Trainer.
"""
