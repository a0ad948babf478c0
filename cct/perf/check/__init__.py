"""The GPU check (`python -m cct.perf --device cuda --check`): every GPU path once, one line
per case, each case in its own process."""
