"""Analysis of trained CCTs, in three packages and the run contract they share:

    analysis.shp        per-head / per-node label matrices, clusters, noise and SNR (SHP/SNP)
    analysis.committee  soft committees of equally accurate, structurally different models
    analysis.report     the sweep report: evidence, verdicts, figures, one HTML page
    analysis.runs       the MLflow run contract: role tags, artifact paths, finding runs
    analysis.pareto     the Pareto front, shared by the sweep summary and the report

Imports mlflow and cct, never ray.
"""
