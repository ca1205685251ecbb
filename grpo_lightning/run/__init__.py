"""The run's lifecycle: run folders, checkpoints (checked before use), interruption, resume and the
data position it needs, and the export of the trained policy.
"""
