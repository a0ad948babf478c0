"""The benchmark suite (`python -m cct.perf`): each figure of our pipeline next to the plain
reference pipeline's, with the targets it must meet."""
