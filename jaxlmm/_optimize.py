"""Trust-region Newton minimisation of a small smooth objective, as one `lax.while_loop`.

Minimises f(θ) over all of Rᵏ with the exact gradient and Hessian (autodiff). The step is the
Newton step with the Hessian's eigenvalues made positive, d = −V |Λ|⁻¹ Vᵀ g (a descent direction
that leaves saddle regions along negative curvature), truncated to a trust radius (`FIRST_RADIUS` at
the start) that shrinks by 4 when a step fails to lower f and grows after a success.

It stops, converged, when the largest gradient entry is below ``gtol`` or when the Newton decrement
gᵀ|H|⁻¹g — the predicted remaining decrease of f, invariant to the scale of θ — is below
``DECREMENT_TOL`` × max(1, |f|), i.e. at rounding level (f is a sum with cancellation, so its last
digits are noise and a gradient test alone can ask for more than the arithmetic gives). It also stops
converged when the trust radius collapses with a decrement below ``STALL_DECREMENT_TOL`` × max(1, |f|)
(steps rejected in f's rounding); unconverged when the radius collapses farther out, or after
``max_iter`` steps.

Then entries flagged ``snappable`` that are within ``snap_tol`` of zero are set to exactly zero
when that does not raise f by more than a rounding-level amount, and Newton polishes the rest
(as lme4 and MixedModels.jl snap variance parameters onto the boundary). A fit that crawls towards
the boundary along a curved valley tries it early (``probe_score``).
Being a pure `while_loop`, it runs under `jit` and `vmap`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _linalg


def _select(pred: jax.Array, on_true, on_false) -> jax.Array:
    """``on_true`` where the scalar ``pred`` holds, else ``on_false`` (a Python number takes the other
    branch's dtype and shape): `lax.select`, a primitive, where `jnp.where` is a jitted function (a
    nested call in the loop body's jaxpr; replacing them made no measurable difference to compile
    time, but keeps the body's jaxpr flat)."""
    if not hasattr(on_true, "shape"):
        on_true = lax.full_like(on_false, on_true)
    if not hasattr(on_false, "shape"):
        on_false = lax.full_like(on_true, on_false)
    return lax.select(pred, on_true, on_false)


def bfgs_update(H: jax.Array, step: jax.Array, grad_change: jax.Array) -> jax.Array:
    """BFGS update of a Hessian approximation; unchanged when the step shows no positive curvature
    (sᵀy ≤ 0) or the current approximation is not positive along the step (sᵀHs ≤ 0)."""
    Hs = H @ step
    sHs = step @ Hs
    sy = step @ grad_change
    scale = jnp.sqrt((step @ step) * (grad_change @ grad_change))
    usable = (sy > 1e-12 * scale) & (sHs > 0)
    sHs_safe = jnp.where(usable, sHs, 1.0)
    sy_safe = jnp.where(usable, sy, 1.0)
    updated = H - jnp.outer(Hs, Hs) / sHs_safe + jnp.outer(grad_change, grad_change) / sy_safe
    return jnp.where(usable, updated, H)


FORWARD_HESSIAN_MAX = 6
FIRST_STEP = 1.0  # the length of the first BFGS step without an exact start (θ units: relative SDs)
# The first trust radius (θ units). From Λ = I, the first Newton steps of a random-slopes model can
# overshoot far past the optimum; a finite radius keeps the loop from wandering through the sign-
# symmetric region around θᵢᵢ = 0. Measured (iteration counts; llf unchanged to 3e-8): Orthodont's
# `distance ~ age + (age | Subject)` 20 -> 8 iterations (ML 13 -> 8); 300 single fits of simulated
# Orthodont responses mean 13.9 -> 10.6 and max 151 -> 43, 2,000 in a batch max 72 -> 53; sitka
# 12/13 -> 6/6; 30 fits (the 20 lme4-reference fits of one-factor and small crossed models, sitka's
# two, Orthodont's two above, 6 simulated slopes models) 237 -> 202 iterations in all (one simulated
# model 10 -> 15); sleepstudy, dietox and the crossed models (Penicillin, psycholing,
# STAR, InstEval) the same. 1.5 gave 212 in all, 1 254, 3 224, 4 230, no bound 237.
FIRST_RADIUS = 2.0


def _absolute_eigen(H: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(|Λ|, V) of symmetric ``H`` = V Λ Vᵀ, the eigenvalues' magnitudes floored at 1e-10 of the largest."""
    evals, evecs = _linalg.eigh_one_at_a_time(H)
    scale = jnp.maximum(jnp.max(jnp.abs(evals)), 1e-300)
    return jnp.maximum(jnp.abs(evals), 1e-10 * scale), evecs


def positive_definite(H: jax.Array) -> jax.Array:
    """V |Λ| Vᵀ (`_absolute_eigen`): the matrix Newton's steps use in place of ``H``
    (`minimize_newton`), and a positive definite start for BFGS updates — from an indefinite exact
    Hessian (common far from the optimum) the updates stay indefinite and BFGS stalls. Unchanged (to
    rounding) when ``H`` is positive definite already."""
    absvals, evecs = _absolute_eigen(H)
    return (evecs * absvals) @ evecs.T


def value_and_forward_grad(fun: Callable[[jax.Array], jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(f(x), ∇f(x)) by forward mode: one JVP per coordinate direction, vmapped."""
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    f, g = jax.vmap(lambda v: jax.jvp(fun, (x,), (v,)))(eye)
    return f[0], g


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
    radius: jax.Array  # trust radius: the longest step (Euclidean) allowed
    it: jax.Array
    phase: jax.Array  # 0: evaluate the start, 1: Newton steps, 2: try snapping to the bounds, 3: done,
    # 4: an exact evaluation at the solution (``exact_final``)
    snapped: jax.Array  # the snap has been tried
    converged: jax.Array
    probe_x: jax.Array  # a boundary probe's point, and f, ∇f, ∇²f there (see ``probe_score``)
    probe_f: jax.Array
    probe_g: jax.Array
    probe_H: jax.Array
    probe_steps: jax.Array  # Newton steps taken from the probe's point
    f_mark: jax.Array  # f at the last multiple of PROBE_EVERY iterations (at the start before the first)


# Phases, int32 like the state's (`_select` takes both branches' dtypes as they are).
_START, _NEWTON, _SNAP, _DONE, _FINAL, _PROBE, _PROBE_STEP = (np.int32(p) for p in range(7))
# An exact-Newton fit not converged after a multiple of PROBE_EVERY iterations tries the boundary
# (``probe_score``).
PROBE_EVERY = 12
PROBE_STEPS = 6
PROBE_CRAWL = 1e-3  # ... if f fell by less than this since the last multiple
DECREMENT_TOL = 1e-14
# A batched fit of 10,000 rows (1,000 groups, `y ~ x + (x | g)`) stalled 2e-7 from its optimum in θ
# (gradient 2.4e-3, deviance 48,075, its single fit's log-likelihood to 1e-11): Newton steps whose
# predicted decrease, about 1e-9, was lost in the rounding of f were rejected until the trust region
# collapsed. A stall within 1e-11 |f| of the predicted minimum is convergence at f's precision.
STALL_DECREMENT_TOL = 1e-11


def minimize_newton(
    fun: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    snappable: jax.Array,
    *,
    gtol: float = 1e-6,
    max_iter: int | jax.Array = 200,
    snap_tol: float = 1e-4,
    quasi_newton: bool = False,
    exact_steps: int | jax.Array = 1,
    forward_hessian: bool | None = None,
    exact_final: bool = False,
    exact_start: bool = True,
    first_step: float | None = None,
    probe_score: Callable[[jax.Array], jax.Array] | None = None,
) -> NewtonResult:
    """Minimise ``fun`` from ``x0``; ``snappable`` (bool per entry) marks entries that may snap to 0.

    One `lax.while_loop` whose body evaluates f, ∇f and ∇²f exactly once (so they are traced and
    compiled once): the start, each Newton trial point and the snap trial all go through it.

    ``quasi_newton=True``: the first ``exact_steps`` Newton steps use the exact Hessian (an int or
    an array: the same program runs exact Newton throughout with ``exact_steps`` ≥ ``max_iter``); a
    second loop then evaluates only f and ∇f and updates the Hessian by BFGS. Its body costs about a fifth
    of an exact one, for a few more iterations — the better trade under `vmap`, where every member
    pays for the body until the last one stops. The stopping rules are the same.

    ``exact_final=True`` (with ``quasi_newton``; for a single, unbatched fit): one loop whose body
    takes either evaluation through `lax.cond`, ending with an exact evaluation at the solution, so
    that the result's Hessian is exact there (what inference needs) and the Hessian program is
    compiled once instead of twice (InstEval: 1.5-2 s less compilation). Under `vmap` a `cond`
    computes both branches: batches keep the two loops.

    ``exact_start=False`` (with ``quasi_newton``): BFGS starts from ‖∇f‖/`FIRST_STEP` · I, a first
    step of length `FIRST_STEP` down the gradient, instead of ``exact_steps`` exact Newton steps (with
    ``exact_final``: one exact evaluation at the start). For crossed models with a dense block of
    32+ rows an exact start cost more than the iterations it saved: its Newton steps from Λ = I were
    often rejected, each rejection another exact Hessian — single fits of psycholing's maximal model
    24 -> 20 iterations and 20 -> 14 ms warm, STAR 11 -> 12 and 431 -> 277 ms, InstEval 5 -> 12 and
    2.49 -> 2.35 s; `fit_many` of 200 psycholing responses 5.2 -> 3.6 s warm. Sleepstudy's 4,000
    responses take twice as long that way and keep the exact step.

    ``first_step`` (with ``exact_start=False``): the first step's length relative to ‖x0‖ (a start
    close to the solution, `_fit.moment_start`); None: `FIRST_STEP` in absolute units.

    ``probe_score`` (exact-Newton loops): a fit not converged after a multiple of `PROBE_EVERY`
    iterations, crawling (f fell by less than `PROBE_CRAWL` since the last multiple, or since the
    start), tries the boundary. It sets the ``snappable`` entry of lowest score to 0, evaluates
    there, takes up to `PROBE_STEPS` Newton steps in the other entries from that point while f
    falls, and moves to the first whose f is lower than at the current point and where f curves
    upwards along the zeroed entry (so that the zero is not a saddle). A minimum on the boundary
    can lie at the end of a long curved valley in which Newton's steps crawl: 82 of 2,000 bootstrap
    refits of Orthodont's ``(age | Subject)`` took more than 30 iterations, one of them 200,
    unconverged, 3e-8 below the optimum with the slope's diagonal entry of Λ still at 0.03; zeroing
    it and five Newton steps reach the optimum. Probing whenever a fit was not converged at
    iteration 12, crawling or not, took a refit whose optimum is inside to a worse boundary point.

    ``forward_hessian`` (default: for up to ``FORWARD_HESSIAN_MAX`` variables) takes the Hessian
    by forward-over-forward differentiation instead of forward-over-reverse: for a few variables
    it traces and compiles in about half the time (sleepstudy: 0.17 s against 0.30 s to compile).
    """
    if forward_hessian is None:
        forward_hessian = x0.shape[0] <= FORWARD_HESSIAN_MAX
    value_grad = jax.value_and_grad(fun)

    def grad_with_aux(x):
        f, g = value_grad(x)
        return g, (f, g)

    def forward_grad_with_aux(x):
        f, g = value_and_forward_grad(fun, x)
        return g, (f, g)

    def evaluate_exact(x, state: _State):
        """f, ∇f and ∇²f from one forward-over-reverse (or forward-over-forward) pass."""
        H, (f, g) = jax.jacfwd(forward_grad_with_aux if forward_hessian else grad_with_aux, has_aux=True)(x)
        return f, g, H

    def evaluate_bfgs(x, state: _State):
        f, g = value_grad(x)
        return f, g, bfgs_update(positive_definite(state.H), x - state.x, g - state.g)

    n = x0.shape[0]
    snappable = jnp.asarray(snappable, bool)

    def newton_proposal(x, g, H, radius):
        absvals, evecs = _absolute_eigen(H)
        projected = evecs.T @ g
        step = -evecs @ (projected / absvals)
        decrement = jnp.sum(projected * projected / absvals)
        length = jnp.sqrt(jnp.sum(step * step))
        step = step * jnp.minimum(1.0, radius / jnp.maximum(length, 1e-300))
        return x + step, length, decrement

    def near_zero(x):
        return snappable & (jnp.abs(x) <= snap_tol) & (x != 0)

    def probe_point(x):
        """``x`` with its snappable nonzero entry of lowest ``probe_score`` set to 0."""
        candidates = snappable & (x != 0)
        j = jnp.argmin(jnp.where(candidates, probe_score(x), jnp.inf))
        return jnp.where((jnp.arange(n) == j) & candidates, 0.0, x)

    def proposal_inputs(state: _State, in_step, held):
        """(x, ∇f, ∇²f, trust radius) the loop body's Newton proposal starts from: in `_PROBE_STEP`
        (``in_step``), the probe's point with the entries it zeroed (``held``) held and no trust
        radius, so that one proposal serves both."""
        held_H = jnp.where(held[:, None] | held[None, :], jnp.eye(n, dtype=state.H.dtype), state.probe_H)
        return (_select(in_step, state.probe_x, state.x),
                _select(in_step, jnp.where(held, 0.0, state.probe_g), state.g),
                _select(in_step, held_H, state.H),
                _select(in_step, jnp.inf, state.radius))

    def upward_along_held(H, held):
        return jnp.all(jnp.where(held, jnp.diagonal(H) > 0, True))

    def cond(state: _State):
        return state.phase != _DONE

    def start_or_bfgs(x, state: _State):
        """BFGS, starting from ‖∇f‖/`FIRST_STEP` · I (see ``exact_start``)."""
        f, g, H = evaluate_bfgs(x, state)
        length = FIRST_STEP if first_step is None else first_step * jnp.sqrt(jnp.sum(x0 * x0))
        first = jnp.eye(n, dtype=x.dtype) * (jnp.sqrt(jnp.sum(g * g)) / length)
        return f, g, jnp.where(state.phase == _START, first, H)

    def evaluate_mixed(x, state: _State):
        """Exact at the end, and at the start with ``exact_start``; BFGS otherwise."""
        exact = (state.phase == _FINAL) | (exact_start & (state.phase == _START))
        return jax.lax.cond(exact, evaluate_exact, start_or_bfgs, x, state)

    def make_body(evaluate_step, cap, final: bool, keep_rejected_hessian, end_exact: bool = False,
                  probe: bool = False):
        """The loop body; ``final``: reaching ``cap`` ends the minimisation (snap, then done);
        ``keep_rejected_hessian``: a bool, or a function of the state; ``end_exact``: pass through
        `_FINAL` before `_DONE`; ``probe``: try the boundary now and then (``probe_score``)."""

        def body(state: _State):
            if probe:
                in_step = state.phase == _PROBE_STEP
                held = snappable & (state.probe_x == 0)  # the probe's zeroed entries, and any zero before
                x_newton, length, decrement = newton_proposal(*proposal_inputs(state, in_step, held))
            else:
                x_newton, length, decrement = newton_proposal(state.x, state.g, state.H, state.radius)
            newton = state.phase == _NEWTON
            rounding = jnp.maximum(1.0, jnp.abs(state.f))
            small_decrement = newton & (decrement <= DECREMENT_TOL * rounding)
            stay = (state.phase == _START) | (state.phase == _FINAL)
            x_new = _select(stay, state.x, _select(state.phase == _SNAP, jnp.where(near_zero(state.x), 0.0, state.x),
                                                   x_newton))
            if probe:
                x_new = _select(state.phase == _PROBE, probe_point(state.x),
                                _select(in_step, jnp.where(held, 0.0, x_newton), x_new))
            f_new, g_new, H_new = evaluate_step(x_new, state)
            finite = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new)) & jnp.all(jnp.isfinite(H_new))
            tol = _select(state.phase == _SNAP, 1e-10 * rounding, 0.0)
            keep_rejected = keep_rejected_hessian(state) if callable(keep_rejected_hessian) else keep_rejected_hessian
            ok = (state.phase == _START) | (finite & (f_new <= state.f + tol) & ~small_decrement)
            ok = ok | ((state.phase == _FINAL) & finite)
            if probe:
                probe_ok = finite & (f_new < state.f) & upward_along_held(H_new, held & (state.x != 0))
                ok = (state.phase != _PROBE) & ((in_step & probe_ok) | (~in_step & ok))
                # Not taken yet, but lower than the probe's last point: another step from there.
                probe_on = (in_step & ~probe_ok & finite & (f_new < state.probe_f)
                            & (state.probe_steps + 1 < PROBE_STEPS))
            taken = jnp.minimum(length, state.radius)
            radius = _select(
                newton,
                _select(ok, jnp.maximum(state.radius, 4.0 * taken), 0.25 * taken),
                _select(state.phase == _SNAP, jnp.inf, state.radius),
            )
            x = _select(ok, x_new, state.x)
            f = _select(ok, f_new, state.f)
            g = _select(ok, g_new, state.g)
            # A BFGS update from a rejected trial point still carries curvature information.
            H = _select(ok | (keep_rejected & finite), H_new, state.H)
            stalled = newton & ~small_decrement & (radius < 1e-13 * (1.0 + jnp.max(jnp.abs(state.x))))
            it = state.it + (newton & ~small_decrement).astype(jnp.int32)
            gmax = jnp.max(jnp.abs(g))
            # A trust region that collapses where the predicted decrease is within STALL_DECREMENT_TOL
            # of f has met f's rounding floor: converged too.
            at_floor = stalled & (decrement <= STALL_DECREMENT_TOL * rounding)
            converged = ((gmax <= gtol) | small_decrement | at_floor) & jnp.isfinite(f)
            capped = it >= cap
            finished = converged | stalled | (capped & final)
            try_snap = finished & ~state.snapped & jnp.any(near_zero(x))
            phase = _select(try_snap, _SNAP, _select(finished | capped, _DONE, _NEWTON))
            # After a snap, Newton re-checks (and polishes) the other entries.
            phase = _select((state.phase == _SNAP) & ~finished, _NEWTON, phase)
            snapped = state.snapped | (state.phase == _SNAP)
            if end_exact:
                phase = _select(state.phase == _FINAL, _DONE, _select(phase == _DONE, _FINAL, phase))
                converged = _select(state.phase == _FINAL, state.converged, converged)
            probe_x, probe_f, probe_g, probe_H = state.probe_x, state.probe_f, state.probe_g, state.probe_H
            probe_steps, f_mark = state.probe_steps, state.f_mark
            if probe:
                # After a probe Newton goes on, from the probe's last point if it was taken.
                probing = (state.phase == _PROBE) | in_step
                phase = _select(state.phase == _PROBE, _PROBE_STEP,
                                _select(in_step, _select(probe_on, _PROBE_STEP, _NEWTON), phase))
                radius = _select(probing, state.radius, radius)
                it = _select(probing, state.it, it)
                converged = _select(probing, state.converged, converged)
                checkpoint = newton & (it > state.it) & (it % PROBE_EVERY == 0)
                crawling = state.f_mark - f < PROBE_CRAWL
                start_probe = checkpoint & crawling & (phase == _NEWTON) & jnp.any(snappable & (x != 0))
                phase = _select(start_probe, _PROBE, phase)
                f_mark = _select(checkpoint | (state.phase == _START), f, state.f_mark)
                keep = (state.phase == _PROBE) | probe_on
                probe_x = _select(keep, x_new, probe_x)
                probe_f = _select(keep, f_new, probe_f)
                probe_g = _select(keep, g_new, probe_g)
                probe_H = _select(keep, H_new, probe_H)
                probe_steps = _select(state.phase == _PROBE, 0, probe_steps + probe_on.astype(jnp.int32))
            return _State(x, f, g, H, radius, it, phase.astype(jnp.int32), snapped, converged,
                          probe_x, probe_f, probe_g, probe_H, probe_steps, f_mark)

        return body

    init = _State(
        x0,
        jnp.asarray(jnp.inf, x0.dtype),
        jnp.zeros_like(x0),
        jnp.zeros((n, n), x0.dtype),
        jnp.asarray(FIRST_RADIUS, x0.dtype),
        jnp.zeros((), jnp.int32),
        jnp.asarray(_START, jnp.int32),
        jnp.zeros((), bool),
        jnp.zeros((), bool),
        x0,
        jnp.asarray(jnp.inf, x0.dtype),
        jnp.zeros_like(x0),
        jnp.zeros((n, n), x0.dtype),
        jnp.zeros((), jnp.int32),
        jnp.asarray(jnp.inf, x0.dtype),
    )
    probe = probe_score is not None
    if not quasi_newton:
        state = jax.lax.while_loop(cond, make_body(evaluate_exact, max_iter, True, False, probe=probe), init)
    elif exact_final:
        # A rejected trial point's BFGS update is kept, as in the BFGS loop; its exact Hessian is not.
        keep = lambda state: (state.phase != _START) & (state.phase != _FINAL)  # noqa: E731
        state = jax.lax.while_loop(cond, make_body(evaluate_mixed, max_iter, True, keep, end_exact=True), init)
    elif not exact_start:
        state = jax.lax.while_loop(cond, make_body(start_or_bfgs, max_iter, True, True), init)
    else:
        first_cap = jnp.minimum(exact_steps, max_iter)
        state = jax.lax.while_loop(cond, make_body(evaluate_exact, first_cap, False, False, probe=probe), init)
        # Stopped only by the exact-step cap: continue with BFGS from the exact Hessian.
        resume = ~state.converged & (state.it >= first_cap) & (state.it < max_iter) & (state.radius > 0)
        state = state._replace(phase=jnp.where(resume, _NEWTON, _DONE).astype(jnp.int32))
        state = jax.lax.while_loop(cond, make_body(evaluate_bfgs, max_iter, True, True), state)
    gmax = jnp.max(jnp.abs(state.g))
    return NewtonResult(state.x, state.f, state.g, state.H, gmax, state.it, state.converged, snappable & (state.x == 0))
