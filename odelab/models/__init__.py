"""Models as equinox modules: calling one solves."""

from .latent_ode import LatentODE as LatentODE
from .neural_cde import NeuralCDE as NeuralCDE, control_path as control_path
from .neural_ode import (
    AugmentedNeuralODE as AugmentedNeuralODE,
    NeuralODE as NeuralODE,
)
from .neural_sde import NeuralSDE as NeuralSDE
from .stable_sde import StableNeuralSDE as StableNeuralSDE
