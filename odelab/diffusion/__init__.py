"""Diffusion and flow models as ordinary differential equations (issue #6, in parts).

So far: noise schedules and time grids incl. diffusers' timestep spacings
(`schedules`), analytic Gaussian-mixture data with closed-form denoisers (`analytic`),
deterministic sampling as a solve of the probability-flow ODE with odelab's exponential
integrators (`sampling`: DDIM, DPM-Solver++(2M/3M) and UniPC matching diffusers,
ETDRK2/4, exponential Adams; model adapters, guidance, thresholding), and stochastic
sampling of the reverse SDE (`sde`: Euler–Maruyama, predictor–corrector Langevin,
DDIM with η > 0, SDE-DPM-Solver++(2M)), and MixGRPO's mixed ODE–SDE sampling with the
Gaussian log-probabilities of its stochastic steps (`mixed`). Mean-reverting diffusion
(IR-SDE) and its MR Sampler, DPM-Solver(++) in the centred variable (`mean_reverting`).
Gradients through samplers (`sample(..., adjoint="checkpoint"|"adjoint_dpm"|
"reversible")`), learned time grids (`learned_grid`), and their applications: noise
optimisation and reward fine-tuning (`finetune`) of a small DSM-trained model (`dsm`).
Training (issue #11): one weighted denoising loss for every prediction type and path,
flow matching, reflow and straightness (`losses`), kinetic-optimal Gaussian paths
(`kinetic`), and exact log-likelihoods through the probability-flow ODE (`likelihood`).
"""

from . import (
    analytic as analytic,
    dsm as dsm,
    finetune as finetune,
    inversion as inversion,
    kinetic as kinetic,
    learned_grid as learned_grid,
    likelihood as likelihood,
    losses as losses,
    mean_reverting as mean_reverting,
    mixed as mixed,
    sampling as sampling,
    schedules as schedules,
    sde as sde,
)
from .dsm import EpsMLP as EpsMLP, train_denoiser as train_denoiser
from .finetune import (
    finetune_reward as finetune_reward,
    optimize_noise as optimize_noise,
)
from .inversion import invert as invert
from .kinetic import (
    KineticOptimal as KineticOptimal,
    data_separation as data_separation,
    kinetic_energy as kinetic_energy,
    kinetic_optimal_schedule as kinetic_optimal_schedule,
)
from .learned_grid import (
    GridParams as GridParams,
    fit_grid as fit_grid,
    load_grid as load_grid,
    save_grid as save_grid,
)
from .likelihood import bits_per_dim as bits_per_dim, log_likelihood as log_likelihood
from .losses import (
    EDMPrecond as EDMPrecond,
    denoising_loss as denoising_loss,
    flow_matching_loss as flow_matching_loss,
    reflow_pairs as reflow_pairs,
    sample_times as sample_times,
    straightness as straightness,
)
from .mean_reverting import (
    MeanReverting as MeanReverting,
    mean_reverting_denoiser as mean_reverting_denoiser,
    sample_mean_reverting as sample_mean_reverting,
)
from .mixed import (
    MixedSample as MixedSample,
    sample_mixed as sample_mixed,
    sde_transition as sde_transition,
    trajectory_log_probs as trajectory_log_probs,
    transition_log_prob as transition_log_prob,
    window_at as window_at,
)
from .sampling import sample as sample, to_denoiser as to_denoiser
from .schedules import (
    EDM as EDM,
    VE as VE,
    RectifiedFlow as RectifiedFlow,
    VPCosine as VPCosine,
    VPDiscrete as VPDiscrete,
    VPLinear as VPLinear,
    diffusers_timesteps as diffusers_timesteps,
    time_grid as time_grid,
)
from .sde import reverse_sde_terms as reverse_sde_terms, sample_sde as sample_sde
