"""Bound-constrained Newton minimisation of a small smooth objective, as a `lax.while_loop`.

Minimises f(θ) subject to θ_i ≥ lower_i with the exact gradient and Hessian (autodiff):

* variables at their bound whose gradient pushes outward are held there (the active set);
* on the free variables the step solves (H + μ s I) d = −g by Cholesky, where μ is a
  Levenberg–Marquardt damping that grows when a step fails to decrease f and shrinks when it
  succeeds (s is the Hessian's scale); where H + μ s I is not positive definite (near a saddle
  point) the shift is raised to a Gershgorin bound that makes it so; the step is projected on the
  bounds;
* it stops when the projected gradient is below ``gtol`` (converged), or when no step can decrease
  f any further (converged if the projected gradient is small, else not), or after ``max_iter``.

At the end, bounded variables within ``snap_tol`` of their bound are set to it when that does
not raise f by more than a rounding-level amount (as lme4 and MixedModels.jl do).
Being a pure `while_loop`, it runs under `jit` and `vmap`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from . import _linalg


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


def _projected_grad(x, g, lower):
    return jnp.where((x <= lower) & (g > 0), 0.0, g)


def minimize_bounded_newton(
    fun: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    lower: jax.Array,
    *,
    gtol: float = 1e-6,
    max_iter: int = 200,
    snap_tol: float = 1e-5,
) -> NewtonResult:
    """Minimise ``fun`` from ``x0`` subject to ``x >= lower`` (use -inf for unbounded entries).

    One `lax.while_loop` whose body evaluates f, ∇f and ∇²f exactly once (so they are traced and
    compiled once): the start, each Newton trial point and the snap trial all go through it.
    """
    value_grad = jax.value_and_grad(fun)
    hessian = jax.hessian(fun)
    n = x0.shape[0]
    eye = jnp.eye(n, dtype=x0.dtype)

    def newton_proposal(state: _State):
        x, g, H = state.x, state.g, state.H
        eps = jnp.minimum(1e-8, jnp.max(jnp.abs(_projected_grad(x, g, lower))))
        active = (x <= lower + eps) & (g > 0)
        free = ~active
        both = free[:, None] & free[None, :]
        Hf = jnp.where(both, H, 0.0) + jnp.where(active, 1.0, 0.0) * eye
        gf = jnp.where(free, g, 0.0)
        scale = jnp.maximum(jnp.max(jnp.abs(jnp.diagonal(Hf))), 1e-300)
        shift = state.mu * scale
        off = jnp.sum(jnp.abs(Hf), axis=1) - jnp.abs(jnp.diagonal(Hf))
        gershgorin = jnp.maximum(0.0, -jnp.min(jnp.diagonal(Hf) - off))
        L1 = _linalg.cholesky(Hf + shift * eye)
        L2 = _linalg.cholesky(Hf + (jnp.maximum(shift, 1.01 * gershgorin) + 1e-10 * scale) * eye)
        L = jnp.where(jnp.all(jnp.isfinite(L1)), L1, L2)
        d = jnp.where(free, -_linalg.cho_solve(L, gf), 0.0)
        return jnp.where(active, lower, jnp.maximum(x + d, lower))

    def near_bound(x):
        return (x - lower <= snap_tol * jnp.maximum(1.0, jnp.abs(x))) & (x > lower)

    def cond(state: _State):
        return state.phase != _DONE

    def body(state: _State):
        x_new = jnp.where(
            state.phase == _START,
            state.x,
            jnp.where(state.phase == _SNAP, jnp.where(near_bound(state.x), lower, state.x), newton_proposal(state)),
        )
        f_new, g_new = value_grad(x_new)
        H_new = hessian(x_new)
        finite = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new))
        tol = jnp.where(state.phase == _SNAP, 1e-10 * jnp.maximum(1.0, jnp.abs(state.f)), 0.0)
        ok = (state.phase == _START) | (finite & (f_new <= state.f + tol))
        newton_ok = ok & (state.phase == _NEWTON)
        mu = jnp.where(
            state.phase == _NEWTON,
            jnp.where(ok, jnp.where(state.mu < 1e-8, 0.0, state.mu / 10.0), jnp.maximum(state.mu * 10.0, 1e-6)),
            state.mu,
        )
        x = jnp.where(ok, x_new, state.x)
        f = jnp.where(ok, f_new, state.f)
        g = jnp.where(ok, g_new, state.g)
        H = jnp.where(ok, H_new, state.H)
        no_move = newton_ok & (f_new >= state.f) & (jnp.max(jnp.abs(x_new - state.x)) == 0.0)
        stalled = (mu > 1e12) | no_move
        it = state.it + (state.phase == _NEWTON).astype(jnp.int32)
        pg = jnp.max(jnp.abs(_projected_grad(x, g, lower)))
        finished = (pg <= gtol) | stalled | (it >= max_iter)
        snapped = state.snapped | (state.phase == _SNAP)
        try_snap = finished & ~snapped & jnp.any(near_bound(x))
        phase = jnp.where(try_snap, _SNAP, jnp.where(finished & ~try_snap, _DONE, _NEWTON))
        # After a successful snap, let Newton re-check (and polish) the free variables.
        phase = jnp.where((state.phase == _SNAP) & ok & (pg > gtol) & (it < max_iter), _NEWTON, phase)
        mu = jnp.where((state.phase == _SNAP) & ok, 0.0, mu)
        return _State(x, f, g, H, mu, it, phase.astype(jnp.int32), snapped, stalled & (phase == _DONE))

    f_dummy = jnp.asarray(jnp.inf, x0.dtype)
    init = _State(
        x0,
        f_dummy,
        jnp.zeros_like(x0),
        jnp.zeros((n, n), x0.dtype),
        jnp.zeros((), x0.dtype),
        jnp.zeros((), jnp.int32),
        jnp.asarray(_START, jnp.int32),
        jnp.zeros((), bool),
        jnp.zeros((), bool),
    )
    state = jax.lax.while_loop(cond, body, init)
    pg = jnp.max(jnp.abs(_projected_grad(state.x, state.g, lower)))
    converged = jnp.isfinite(state.f) & ((pg <= gtol) | (state.stalled & (pg <= 1e3 * gtol)))
    active = (state.x <= lower) & (state.g >= 0)
    return NewtonResult(state.x, state.f, state.g, state.H, pg, state.it, converged, active)
