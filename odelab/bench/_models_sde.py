"""The neural-SDE case of `odelab bench models`: one training step of odelab's
`NeuralSDE` against torchsde's, same architecture, same Euler–Maruyama steps.

Drift MLP `dim -> width -> width -> dim` (tanh), diagonal diffusion MLP `dim -> width
-> dim` (tanh hidden, sigmoid output), batch of initial states, loss the mean square
of the final state, Adam. odelab's step is one jitted function (solve, gradient and
update) with `brownian="increments"` (the grid's increments drawn in one call);
torchsde's is `sdeint(method="euler", dt=1/steps)` with its default Brownian interval,
`loss.backward()` and `Adam.step()`. Also timed: odelab with
`brownian="virtual_tree"`, the construction a diffrax user reaches for first.
"""

import jax
import jax.numpy as jnp
import jax.random as jr


def odelab_step(dim, width, batch, steps, brownian="increments", adjoint="checkpoint"):
    """A jitted training step `(model, opt_state, y0, key) -> (model, opt_state,
    loss)` and its initial arguments."""
    import equinox as eqx
    import optax

    from ..models import NeuralSDE

    model = NeuralSDE(
        dim,
        width,
        2,
        key=jr.key(0),
        diffusion_activation=jax.nn.sigmoid,
        steps=steps,
        brownian=brownian,
        adjoint=adjoint,
    )
    # The diffusion MLP has one hidden layer, as the peer's.
    model = eqx.tree_at(
        lambda m: m.diffusion,
        model,
        eqx.nn.MLP(dim, dim, width, 1, activation=jnp.tanh, key=jr.key(1)),
    )
    opt = optax.adam(1e-3)
    ts = jnp.array([0.0, 1.0])

    def loss(m, y0, key):
        return jnp.mean(m.batch_solution(ts, y0, key=key).ys[-1] ** 2)

    @eqx.filter_jit
    def step(m, state, y0, key):
        value, grads = eqx.filter_value_and_grad(loss)(m, y0, key)
        updates, state = opt.update(grads, state, m)
        return eqx.apply_updates(m, updates), state, value

    y0 = jr.normal(jr.key(2), (batch, dim))
    state = opt.init(eqx.filter(model, eqx.is_array))
    return step, (model, state, y0)


def torchsde_step(dim, width, batch, steps):
    """torchsde's training step `() -> loss` on the same architecture."""
    import torch
    import torchsde

    class SDE(torch.nn.Module):
        noise_type = "diagonal"
        sde_type = "ito"

        def __init__(self):
            super().__init__()
            self.drift = torch.nn.Sequential(
                torch.nn.Linear(dim, width),
                torch.nn.Tanh(),
                torch.nn.Linear(width, width),
                torch.nn.Tanh(),
                torch.nn.Linear(width, dim),
            )
            self.diffusion = torch.nn.Sequential(
                torch.nn.Linear(dim, width),
                torch.nn.Tanh(),
                torch.nn.Linear(width, dim),
            )

        def f(self, t, y):
            del t
            return self.drift(y)

        def g(self, t, y):
            del t
            return torch.sigmoid(self.diffusion(y))

    torch.manual_seed(0)
    sde = SDE()
    opt = torch.optim.Adam(sde.parameters(), 1e-3)
    y0 = torch.randn(batch, dim)
    ts = torch.tensor([0.0, 1.0])

    def step():
        ys = torchsde.sdeint(sde, y0, ts, dt=1.0 / steps, method="euler")
        loss = (ys[-1] ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step
