"""Models as equinox modules: calling one solves."""

from .cnf import CNF as CNF, nll_loss as nll_loss
from .control import control_path as control_path
from .deq import DEQ as DEQ, DEQClassifier as DEQClassifier
from .homoode import HomoODE as HomoODE, HomoODEClassifier as HomoODEClassifier
from .latent_ode import LatentODE as LatentODE
from .neural_cde import NeuralCDE as NeuralCDE
from .neural_ode import (
    AugmentedNeuralODE as AugmentedNeuralODE,
    NeuralODE as NeuralODE,
)
from .neural_sde import NeuralSDE as NeuralSDE
from .ode_classifier import ODEClassifier as ODEClassifier
from .stable_sde import StableNeuralSDE as StableNeuralSDE
