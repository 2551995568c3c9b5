"""A study: the experiment file, the runs it names (spec, hash, folder), their rows, and the study kinds.

Plain Python and PyTorch, no Ray: the runner schedules what this package describes.
"""
