"""metakern: fused kernels for gradient-based meta-learning in PyTorch.

>>> import metakern as mk
>>> maml = mk.MAML(mk.MLP(1, [40, 40], 1), lr=0.01, steps=1)
"""
from .version import __version__
from . import backends, functional, tasks
from .functional import adapt, forward
from .learners import ANIL, MAML, FastModel, MAMLPlusPlus, MetaSGD, Reptile
from .nn import MLP, Conv4, OmniglotMLP, PerStepBatchNorm2d

__all__ = ["__version__", "adapt", "forward", "backends", "functional", "tasks", "MLP", "Conv4", "OmniglotMLP",
           "PerStepBatchNorm2d",
           "MAML", "MAMLPlusPlus", "MetaSGD", "Reptile", "ANIL", "FastModel"]
