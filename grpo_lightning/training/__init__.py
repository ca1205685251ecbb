"""The training side of the Lightning system: typed settings, the update of a training step,
the optimizer, callbacks, progress reports and the process's thread policy.
"""
