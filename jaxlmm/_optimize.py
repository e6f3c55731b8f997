"""Damped Newton minimisation of a small smooth objective, as one `lax.while_loop`.

Minimises f(θ) over all of Rᵏ with the exact gradient and Hessian (autodiff). The step solves
(|H| + μ s I) d = −g, where |H| has the eigenvalues of H made positive (so saddle regions are left
along negative curvature, not approached), s is the Hessian's scale and μ a Levenberg–Marquardt
damping that grows when a step fails to decrease f and shrinks when it succeeds. It stops when
the largest gradient entry is below ``gtol`` (converged), when no step can decrease f any more
(converged if the Newton decrement — the predicted remaining decrease of f — is at rounding
level), or after ``max_iter`` steps.

Then entries flagged ``snappable`` that are within ``snap_tol`` of zero are set to exactly zero
when that does not raise f by more than a rounding-level amount, and Newton polishes the rest
(as lme4 and MixedModels.jl snap variance parameters onto the boundary).
Being a pure `while_loop`, it runs under `jit` and `vmap`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp



class NewtonResult(NamedTuple):
    x: jax.Array
    fun: jax.Array
    grad: jax.Array
    hess: jax.Array
    projected_grad_norm: jax.Array
    iterations: jax.Array
    converged: jax.Array
    active: jax.Array  # bool per variable: held at its bound at the solution


class _State(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    H: jax.Array
    mu: jax.Array
    it: jax.Array
    phase: jax.Array  # 0: evaluate the start, 1: Newton steps, 2: try snapping to the bounds, 3: done
    snapped: jax.Array  # the snap has been tried
    stalled: jax.Array


_START, _NEWTON, _SNAP, _DONE = 0, 1, 2, 3


def minimize_newton(
    fun: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    snappable: jax.Array,
    *,
    gtol: float = 1e-6,
    max_iter: int = 200,
    snap_tol: float = 1e-4,
) -> NewtonResult:
    """Minimise ``fun`` from ``x0``; ``snappable`` (bool per entry) marks entries that may snap to 0.

    One `lax.while_loop` whose body evaluates f, ∇f and ∇²f exactly once (so they are traced and
    compiled once): the start, each Newton trial point and the snap trial all go through it.
    """
    value_grad = jax.value_and_grad(fun)

    def grad_with_aux(x):
        f, g = value_grad(x)
        return g, (f, g)

    def evaluate(x):
        """f, ∇f and ∇²f from one forward-over-reverse pass (f is traced once)."""
        H, (f, g) = jax.jacfwd(grad_with_aux, has_aux=True)(x)
        return f, g, H

    n = x0.shape[0]
    snappable = jnp.asarray(snappable, bool)

    def newton_proposal(state: _State):
        evals, evecs = jnp.linalg.eigh(state.H)
        scale = jnp.maximum(jnp.max(jnp.abs(evals)), 1e-300)
        absvals = jnp.maximum(jnp.abs(evals), 1e-10 * scale) + state.mu * scale
        return state.x - evecs @ ((evecs.T @ state.g) / absvals)

    def near_zero(x):
        return snappable & (jnp.abs(x) <= snap_tol) & (x != 0)

    def cond(state: _State):
        return state.phase != _DONE

    def body(state: _State):
        x_new = jnp.where(
            state.phase == _START,
            state.x,
            jnp.where(state.phase == _SNAP, jnp.where(near_zero(state.x), 0.0, state.x), newton_proposal(state)),
        )
        f_new, g_new, H_new = evaluate(x_new)
        finite = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new)) & jnp.all(jnp.isfinite(H_new))
        tol = jnp.where(state.phase == _SNAP, 1e-10 * jnp.maximum(1.0, jnp.abs(state.f)), 0.0)
        ok = (state.phase == _START) | (finite & (f_new <= state.f + tol))
        newton = state.phase == _NEWTON
        mu = jnp.where(
            newton,
            jnp.where(ok, jnp.where(state.mu < 1e-8, 0.0, state.mu / 10.0), jnp.maximum(state.mu * 10.0, 1e-6)),
            jnp.where(state.phase == _SNAP, 0.0, state.mu),
        )
        x = jnp.where(ok, x_new, state.x)
        f = jnp.where(ok, f_new, state.f)
        g = jnp.where(ok, g_new, state.g)
        H = jnp.where(ok, H_new, state.H)
        no_move = newton & ok & (jnp.max(jnp.abs(x_new - state.x)) <= 1e-15 * jnp.maximum(1.0, jnp.max(jnp.abs(x))))
        stalled = (mu > 1e12) | no_move
        it = state.it + newton.astype(jnp.int32)
        gmax = jnp.max(jnp.abs(g))
        finished = (gmax <= gtol) | stalled | (it >= max_iter)
        try_snap = finished & ~state.snapped & jnp.any(near_zero(x))
        phase = jnp.where(try_snap, _SNAP, jnp.where(finished, _DONE, _NEWTON))
        # After a snap, Newton re-checks (and polishes) the other entries.
        phase = jnp.where((state.phase == _SNAP) & ~finished, _NEWTON, phase)
        snapped = state.snapped | (state.phase == _SNAP)
        return _State(x, f, g, H, mu, it, phase.astype(jnp.int32), snapped, stalled & (phase == _DONE))

    init = _State(
        x0,
        jnp.asarray(jnp.inf, x0.dtype),
        jnp.zeros_like(x0),
        jnp.zeros((n, n), x0.dtype),
        jnp.zeros((), x0.dtype),
        jnp.zeros((), jnp.int32),
        jnp.asarray(_START, jnp.int32),
        jnp.zeros((), bool),
        jnp.zeros((), bool),
    )
    state = jax.lax.while_loop(cond, body, init)
    gmax = jnp.max(jnp.abs(state.g))
    # A stall (no step lowers f) counts as converged when the Newton decrement gᵀ|H|⁻¹g — the
    # predicted further decrease of f, invariant to the scale of θ — is at rounding level.
    evals, evecs = jnp.linalg.eigh(state.H)
    decrement = jnp.sum((evecs.T @ state.g) ** 2 / jnp.maximum(jnp.abs(evals), 1e-300))
    rounding = 1e-10 * jnp.maximum(1.0, jnp.abs(state.f))
    converged = jnp.isfinite(state.f) & ((gmax <= gtol) | (state.stalled & (decrement <= rounding)))
    return NewtonResult(state.x, state.f, state.g, state.H, gmax, state.it, converged, snappable & (state.x == 0))
