"""The ``grpo-lightning`` command: the LightningCLI subclass, its parser and its error messages.
"""
