"""Everything that touches Ray: the sweep command, Tune objects, trials, MLflow runs."""
