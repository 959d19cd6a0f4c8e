"""Adjoints: how gradients flow through a solve (diffrax `AbstractAdjoint`s)."""

from .reversible import ReversibleAdjoint as ReversibleAdjoint
