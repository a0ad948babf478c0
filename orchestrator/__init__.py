"""Everything that touches Ray. The modules here run in the driver process (the sweep
command, Tune objects, the trial function, tracking, the console, cluster checks, the study,
cost); orchestrator/worker/ runs inside Ray's worker processes; orchestrator/bench/ measures
both. Importing this package imports nothing heavy: Ray's Train controller imports it."""

from orchestrator import moved

moved.install()  # a sweep saved before a module moved resumes after it
