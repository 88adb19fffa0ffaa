"""The seed's experiments (ablation S1-S10, sharpening rows 1-6, FGSM, t-SNE), one command each:
``batmann experiment run NAME [--quick] [--out DIR]``."""

from batmann.experiments.catalog import EXPERIMENTS, Experiment, Row, Training
from batmann.experiments.runner import FULL, QUICK, SCALES, ExperimentSummary, Scale, run_experiment

__all__ = ["EXPERIMENTS", "Experiment", "Row", "Training", "FULL", "QUICK", "SCALES", "Scale",
           "ExperimentSummary", "run_experiment"]
