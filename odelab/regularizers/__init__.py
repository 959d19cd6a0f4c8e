"""Regularizers: scalars to add to a loss that make a learned differential equation
cheaper to solve."""

from .fokker_planck import (
    fokker_planck_loss as fokker_planck_loss,
    score_fokker_planck_residual as score_fokker_planck_residual,
)
from .integral import (
    integral_regularizers as integral_regularizers,
    total_derivative as total_derivative,
)
from .local import (
    local_error_estimate as local_error_estimate,
    sample_time as sample_time,
    sampled_step_heuristics as sampled_step_heuristics,
)
from .objective import (
    KINDS as KINDS,
    check_kind as check_kind,
    regularized_solution as regularized_solution,
)
from .solver_heuristics import (
    Heuristics as Heuristics,
    HeuristicsSolver as HeuristicsSolver,
    heuristics_of as heuristics_of,
    solve_with_heuristics as solve_with_heuristics,
    step_heuristics as step_heuristics,
)
