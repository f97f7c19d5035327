"""Contrast between the RGB and depth views: the two-bank memory and its losses."""
from NCE.losses import NCECriterion, NCESoftmaxLoss
from NCE.memory import ContrastMemory

__all__ = ["ContrastMemory", "NCECriterion", "NCESoftmaxLoss"]
