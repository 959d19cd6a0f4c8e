"""Adjoints: how gradients flow through a solve (diffrax `AbstractAdjoint`s)."""

from .continuous import (
    InterpolatingAdjoint as InterpolatingAdjoint,
    QuadratureAdjoint as QuadratureAdjoint,
)
from .exponential import ExponentialAdjoint as ExponentialAdjoint
from .reversible import ReversibleAdjoint as ReversibleAdjoint
