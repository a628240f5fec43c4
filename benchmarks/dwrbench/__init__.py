"""Benchmark and research machinery, outside the installed package.

    bench    the comparison benchmark: methods pruned, fine-tuned and timed side by side
    methods  the methods it compares (3d, one-axis, AutoBot, Torch-Pruning, ...)
    oracle   the iso-cost oracle: surface points, regret, rank correlation
"""
