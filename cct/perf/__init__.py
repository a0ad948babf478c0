"""Performance suite: our pipeline next to a plain reference pipeline (`python -m cct.perf`).

reference_model.py / reference_data.py   the model and input pipeline written the usual way
steps.py                                 one training step of each, as closures
cases.py                                 the models measured and the data both read
timing.py                                interleaved repeats, medians, load average
sharing.py                               N training processes sharing one device
report.py                                bench.json rows, merged by several commands, and bench.md
suite.py                                 the rows, the targets and the command line
"""
