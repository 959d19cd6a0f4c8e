"""Models as equinox modules: calling one solves."""

from .neural_ode import (
    AugmentedNeuralODE as AugmentedNeuralODE,
    NeuralODE as NeuralODE,
)
from .neural_sde import NeuralSDE as NeuralSDE
