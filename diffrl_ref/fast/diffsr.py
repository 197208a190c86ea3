"""Diffusion Spectral Representation, Diff-SR, on the production path (family ``diffsr``).

Shribak, Gao, Li, Xiao and Dai, NeurIPS 2024 (arXiv 2406.16121). The transition is an
energy-based model P(s' | s, a) = exp(psi(s, a)^T nu(s') - log Z(s, a)); a Gaussian-kernel
identity and random Fourier features turn it into a spectral factorisation <phi_omega, mu_omega>;
psi and nu are learned by denoising score matching on s~' = sqrt(1 - beta) s' + sqrt(beta) eps
(Algorithm 1), and a double critic on the features drives an actor-critic loop (Algorithm 2).

Shapes: ``psi`` (B, m), one row per (s, a); ``nu`` (N, m), one row per next state; the Jacobian
of nu in s~' is ``grad_nu`` (B, m, ds); ``beta`` is the perturbation variance in (0, 1), a float,
a 0-d tensor or a (B,) tensor; critic values are stacked as (n_critics, B). Randomness
(frequencies, phases, eps, noise levels) is always an argument. Every loss is differentiable
with autograd and free of host syncs once value checks are off (:func:`~._checks.unchecked`).

Representation learning: where the model score psi^T grad nu comes from. The spec's
``grad_nu_fn(s~', beta) -> (B, m, ds)`` is "the Jacobian of nu", but the clause (and its
conformance tests) only consume the values, and the official code's zeta network outputs that
matrix directly instead of differentiating a nu network. Both are offered, sharing the objective:

* :func:`train_step` (the clause) takes ``grad_nu_fn`` as a callable, like the reference. This is
  the fast path for an agent: one forward pass of a network with m * ds outputs, first-order
  autograd only, and the whole loss traces with ``torch.compile(fullgraph=True)``.
* :func:`train_step_energy` takes the energy network ``nu_fn(s~', beta) -> (B, m)`` and forms
  psi^T grad nu = grad_{s~'} (psi^T nu(s~')) by ONE vector-Jacobian product
  (:func:`energy_score`, ``torch.func.vjp`` with psi as the cotangent): one extra backward pass
  (double backward for the parameter gradients), never the (B, m, ds) Jacobian, and it also traces
  with fullgraph torch.compile. Use it when nu itself is needed (ebm_transition, rff).
  :func:`nu_jacobian` (``torch.func.vmap(jacrev)``, m backward passes) gives the full Jacobian for
  :func:`score_objective` where it is wanted explicitly; it is not needed for training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import ddpm
from ._checks import batch, checking, finite, finite_flag, require, require_values, same_shape, scalar
from .schedule import Schedule, at
from .spectral import discount, vector

#: psi_fn(s (B, ds), a (B, da)) -> psi (B, m): the state-action feature network.
PsiFn = Callable[[Tensor, Tensor], Tensor]
#: grad_nu_fn(s~' (B, ds), beta (B,)) -> (B, m, ds): the Jacobian of nu(s~'; beta) in s~'.
GradNuFn = Callable[[Tensor, Tensor], Tensor]
#: nu_fn(s~' (B, ds), beta (B,)) -> nu (B, m): the next-state energy network.
NuFn = Callable[[Tensor, Tensor], Tensor]

_INF = math.inf


# ---- helpers ---------------------------------------------------------------------------


def _pairwise(psi: Tensor, nu: Tensor, cid: str) -> None:
    batch(psi, cid, "psi")
    batch(nu, cid, "nu")
    require(psi.shape[1] == nu.shape[1], cid,
            f"psi and nu must have the same dimension m, got {tuple(psi.shape)} and {tuple(nu.shape)}")


def _beta(beta: Tensor | float, B: int, like: Tensor, cid: str) -> Tensor:
    """The perturbation variance as a (B, 1) column of ``like``'s dtype, each value strictly inside (0, 1)."""
    if not isinstance(beta, Tensor):
        b = scalar(beta, cid, "beta", 0.0, 1.0)
        require(0.0 < b < 1.0, cid, f"beta must lie in (0, 1), got {b!r}")
        return torch.full((B, 1), b, dtype=like.dtype, device=like.device)
    require(beta.ndim == 0 or tuple(beta.shape) == (B,), cid,
            f"beta must be a scalar or shape ({B},), got {tuple(beta.shape)}")
    finite(beta, cid, "beta")
    require_values((beta > 0) & (beta < 1), cid, "beta must lie in (0, 1)")
    return beta.to(like.dtype).expand(B).unsqueeze(-1)


def _critics(q: Tensor, cid: str, name: str) -> Tensor:
    """Critic values stacked as (n_critics, B), n_critics >= 1."""
    require(q.ndim == 2 and q.shape[0] >= 1, cid, f"{name} must have shape (n_critics, B), got {tuple(q.shape)}")
    return finite(q, cid, name)


def _finite_all(cid: str, tensors: dict[str, Tensor]) -> None:
    """finite() of several tensors with one device-to-host sync when all pass (then each is checked, to name it)."""
    for name, t in tensors.items():
        require(t.is_floating_point(), cid, f"{name} must be a floating tensor, got {t.dtype}")
    if checking() and not bool(torch.stack([finite_flag(t) for t in tensors.values()]).all()):
        for name, t in tensors.items():
            finite(t, cid, name)


def _soft_min(q: Tensor, alpha: float | Tensor, log_pi: Tensor | None, cid: str, name: str) -> Tensor:
    """min_i q_i - alpha log pi per row; alpha a float or a 0-d tensor (e.g. a detached learned temperature)."""
    B = q.shape[1]
    if isinstance(alpha, Tensor):
        require(alpha.ndim == 0, cid, f"alpha must be a scalar, got shape {tuple(alpha.shape)}")
        require_values(torch.isfinite(alpha) & (alpha >= 0), cid, "alpha must be a finite scalar >= 0")
        if log_pi is None:
            require_values(alpha == 0, cid, f"{name} is required when alpha > 0")
    else:
        alpha = scalar(alpha, cid, "alpha", 0.0, _INF)
        require(log_pi is not None or alpha == 0.0, cid, f"{name} is required when alpha > 0")
    q_min = torch.amin(q, dim=0)
    if log_pi is None:
        return q_min
    vector(log_pi, B, cid, name)
    return q_min - alpha * log_pi


# ---- energy-based transition and its kernel form ----------------------------------------


def ebm_transition(psi: Tensor, nu: Tensor) -> tuple[Tensor, Tensor]:
    """Clause ``diffsr.ebm_transition``: P(s'_j | s_i, a_i) = exp(psi_i^T nu_j - log Z_i), log Z_i = logsumexp_j.

    Returns P (B, N) and log Z (B,); the log-sum-exp subtracts the row maximum (no overflow).
    """
    _pairwise(psi, nu, "diffsr.ebm_transition")
    energy = psi @ nu.T
    log_z = torch.logsumexp(energy, dim=1)
    return torch.exp(energy - log_z.unsqueeze(-1)), log_z


def ebm_identity(psi: Tensor, nu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Clause ``diffsr.ebm_identity``: psi^T nu = ||psi||^2/2 - ||psi - nu||^2/2 + ||nu||^2/2, as three log factors.

    Returns ||psi||^2/2 (B,), -||psi_i - nu_j||^2/2 (B, N) and ||nu||^2/2 (N,). The kernel term
    is formed from the differences (not ||psi||^2 + ||nu||^2 - 2 psi^T nu), so it is <= 0 and
    exactly 0 where nu_j = psi_i.
    """
    _pairwise(psi, nu, "diffsr.ebm_identity")
    log_kernel = -0.5 * torch.sum((psi.unsqueeze(1) - nu.unsqueeze(0)) ** 2, dim=2)
    return 0.5 * torch.sum(psi**2, dim=1), log_kernel, 0.5 * torch.sum(nu**2, dim=1)


def fourier(x: Tensor, omegas: Tensor, phases: Tensor | None) -> Tensor:
    """Random Fourier features of the unit Gaussian kernel (no envelope), (rows, F).

    Paired (phases None): [cos(omega^T x) | sin(omega^T x)] / sqrt(D), F = 2D; phased:
    sqrt(2/D) cos(omega^T x + b), F = D.
    """
    D = omegas.shape[0]
    proj = x @ omegas.T
    if phases is None:
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=1) / math.sqrt(D)
    return math.sqrt(2.0 / D) * torch.cos(proj + phases)


def rff(psi: Tensor, nu: Tensor, log_z: Tensor, omegas: Tensor, phases: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Clause ``diffsr.rff``: phi_omega = sqrt(c/D) trig(omega^T psi + b) e^{||psi||^2/2 - log Z}, mu_omega likewise.

    mu_omega(s') = sqrt(c/D) trig(omega^T nu + b) e^{||nu||^2/2}, and E_omega <phi_omega, mu_omega> = P(s' | s, a).
    Returns phi (B, F) and mu (N, F). The envelopes must be finite in the working dtype (a value check).
    """
    cid = "diffsr.rff"
    _pairwise(psi, nu, cid)
    vector(log_z, psi.shape[0], cid, "log_z")
    batch(omegas, cid, "omegas")
    require(omegas.shape[1] == psi.shape[1], cid,
            f"omegas must have shape (D, {psi.shape[1]}), got {tuple(omegas.shape)}")
    if phases is not None:
        vector(phases, omegas.shape[0], cid, "phases")
    log_env_psi = 0.5 * torch.sum(psi**2, dim=1) - log_z
    log_env_nu = 0.5 * torch.sum(nu**2, dim=1)
    top = math.log(torch.finfo(psi.dtype).max)
    require_values((log_env_psi < top).all() & (log_env_nu < top).all(), cid,
                   f"exp(||psi||^2/2 - log Z) and exp(||nu||^2/2) must be finite in {psi.dtype}")
    phi = torch.exp(log_env_psi).unsqueeze(-1) * fourier(psi, omegas, phases)
    mu = torch.exp(log_env_nu).unsqueeze(-1) * fourier(nu, omegas, phases)
    return phi, mu


# ---- perturbed transition and score matching --------------------------------------------


def _mixture(weights: Tensor, means: Tensor, cov: Tensor, B: int, ds: int, cid: str) -> tuple[Tensor, Tensor, Tensor]:
    """Weights (B, N) on the simplex, means broadcast to (B, N, ds), a symmetric PSD covariance (ds, ds)."""
    batch(weights, cid, "weights")
    N = weights.shape[1]
    require(weights.shape[0] == B, cid, f"weights must have shape ({B}, N), got {tuple(weights.shape)}")
    eps = torch.finfo(weights.dtype).eps
    require_values(weights >= 0, cid, "weights must be >= 0")
    require_values((weights.sum(dim=1) - 1.0).abs() <= max(1e-9, 4 * N * eps), cid,
                   "each row of weights must sum to 1")
    require(tuple(means.shape) in ((N, ds), (B, N, ds)), cid,
            f"means must have shape ({N}, {ds}) or ({B}, {N}, {ds}), got {tuple(means.shape)}")
    finite(means, cid, "means")
    require(tuple(cov.shape) == (ds, ds), cid, f"cov must have shape ({ds}, {ds}), got {tuple(cov.shape)}")
    finite(cov, cid, "cov")
    if checking():  # an eigendecomposition, only while value checks run
        tiny = max(1e-12, 4 * (ds + 1) * eps) * (1.0 + cov.abs().amax())  # the reference's 1e-12, or rounding
        require_values((cov - cov.T).abs() <= tiny, cid, "cov must be symmetric")
        require_values(torch.linalg.eigvalsh(0.5 * (cov + cov.T)).amin() >= -tiny, cid,
                       "cov must be positive semidefinite")
    return weights, means.expand(B, N, ds), cov


def perturbed_transition(s_tilde: Tensor, means: Tensor, weights: Tensor, cov: Tensor,
                         beta: Tensor | float) -> tuple[Tensor, Tensor]:
    """Clause ``diffsr.perturbed_transition``: log P(s~' | s, a; beta) and score, Gaussian-mixture P(s' | s, a).

    P(s~' | s, a; beta) = sum_j w_j N(s~'; sqrt(1 - beta) m_j, C), C = (1 - beta) Sigma + beta I;
    score = -C^{-1}(s~' - sqrt(1 - beta) sum_j r_j m_j), r_j the posterior weights. Returns (B,), (B, ds).
    """
    cid = "diffsr.perturbed_transition"
    batch(s_tilde, cid, "s_tilde")
    B, ds = s_tilde.shape
    w, m, sigma = _mixture(weights, means, cov, B, ds, cid)
    b = _beta(beta, B, s_tilde, cid).unsqueeze(-1)                       # (B, 1, 1)
    eye = torch.eye(ds, dtype=s_tilde.dtype, device=s_tilde.device)
    L = torch.linalg.cholesky((1.0 - b) * sigma + b * eye)               # C = L L^T, (B, ds, ds)
    diff = s_tilde.unsqueeze(1) - torch.sqrt(1.0 - b) * m                # (B, N, ds)
    white = torch.linalg.solve_triangular(L.unsqueeze(1), diff.unsqueeze(-1), upper=False).squeeze(-1)
    log_det = 2.0 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(dim=1)
    log_norm = 0.5 * (log_det + ds * math.log(2 * math.pi)).unsqueeze(-1)
    log_comp = torch.log(w) - 0.5 * torch.sum(white**2, dim=2) - log_norm
    log_p = torch.logsumexp(log_comp, dim=1)
    post = torch.exp(log_comp - log_p.unsqueeze(-1))                    # posterior weights of the components
    resid = s_tilde - torch.sqrt(1.0 - b[:, :, 0]) * torch.einsum("bn,bnd->bd", post, m)
    score = -torch.cholesky_solve(resid.unsqueeze(-1), L).squeeze(-1)
    return log_p, score


def model_score(psi: Tensor, grad_nu: Tensor) -> Tensor:
    """The model's score psi^T grad nu per row: (B, m) x (B, m, ds) -> (B, ds)."""
    return torch.einsum("bm,bmd->bd", psi, grad_nu)


def _dsm(score: Tensor, s_tilde: Tensor, s_next: Tensor, sqrt_keep: Tensor, beta: Tensor) -> Tensor:
    """||score + (s~' - sqrt(1 - beta) s') / beta||^2 per row; sqrt_keep = sqrt(1 - beta), both (B, 1)."""
    return torch.sum((score + (s_tilde - sqrt_keep * s_next) / beta) ** 2, dim=1)


def _objective_inputs(psi: Tensor, s_tilde: Tensor, s_next: Tensor, cid: str) -> None:
    batch(psi, cid, "psi")
    batch(s_tilde, cid, "s_tilde")
    batch(s_next, cid, "s_next")
    require(s_tilde.shape[0] == psi.shape[0], cid,
            f"s_tilde must have {psi.shape[0]} rows like psi, got {tuple(s_tilde.shape)}")
    same_shape(cid, s_tilde=s_tilde, s_next=s_next)


def score_objective(psi: Tensor, grad_nu: Tensor, s_tilde: Tensor, s_next: Tensor, beta: Tensor | float) -> Tensor:
    """Clause ``diffsr.score_objective``: ||psi^T grad nu(s~'; beta) + (s~' - sqrt(1 - beta) s') / beta||^2 per row.

    grad_nu (B, m, ds) is the Jacobian, given (see :func:`nu_jacobian`, or :func:`score_objective_energy`
    to get the model score from a nu network by one vector-Jacobian product). Returns (B,).
    """
    cid = "diffsr.score_objective"
    _objective_inputs(psi, s_tilde, s_next, cid)
    B, m = psi.shape
    ds = s_tilde.shape[1]
    require(tuple(grad_nu.shape) == (B, m, ds), cid,
            f"grad_nu must have shape ({B}, {m}, {ds}), got {tuple(grad_nu.shape)}")
    finite(grad_nu, cid, "grad_nu")
    b = _beta(beta, B, s_tilde, cid)
    return _dsm(model_score(psi, grad_nu), s_tilde, s_next, torch.sqrt(1.0 - b), b)


def energy_score(psi: Tensor, nu_fn: NuFn, s_tilde: Tensor, beta: Tensor,
                 cid: str = "diffsr.score_objective") -> Tensor:
    """psi^T grad_{s~'} nu(s~'; beta) = grad_{s~'} (psi^T nu(s~'; beta)) per row, by one vector-Jacobian product.

    ``torch.func.vjp`` with psi as the cotangent: one forward and one backward pass of nu, never the
    (B, m, ds) Jacobian. The result stays differentiable (by ordinary autograd, i.e. double backward)
    in psi and in nu_fn's parameters, and traces with ``torch.compile(fullgraph=True)``. psi is a
    constant of s~' (it depends on (s, a) only); nu_fn must act row-wise. Returns (B, ds).
    """
    primal_and_vjp = torch.func.vjp(lambda x: nu_fn(x, beta), s_tilde)
    nu, vjp_fn = primal_and_vjp[0], primal_and_vjp[1]
    require(tuple(nu.shape) == tuple(psi.shape), cid,
            f"nu_fn returned shape {tuple(nu.shape)}, expected {tuple(psi.shape)}")
    score: Tensor = vjp_fn(psi.to(nu.dtype))[0]
    return score


def nu_jacobian(nu_fn: NuFn, s_tilde: Tensor, beta: Tensor) -> Tensor:
    """The Jacobian d nu / d s~' per row, (B, m, ds), by torch.func.vmap(jacrev) (m backward passes per row).

    nu_fn must act row-wise (no batch statistics). Use :func:`energy_score` when only psi^T grad nu is needed.
    """
    def one(x: Tensor, b: Tensor) -> Tensor:
        return nu_fn(x.unsqueeze(0), b.unsqueeze(0)).squeeze(0)

    jac: Tensor = torch.func.vmap(torch.func.jacrev(one))(s_tilde, beta.expand(s_tilde.shape[0]))
    return jac


def score_objective_energy(psi: Tensor, nu_fn: NuFn, s_tilde: Tensor, s_next: Tensor, beta: Tensor | float) -> Tensor:
    """diffsr.score_objective with grad nu from the energy network nu_fn (one VJP, :func:`energy_score`). (B,)."""
    cid = "diffsr.score_objective"
    _objective_inputs(psi, s_tilde, s_next, cid)
    b = _beta(beta, psi.shape[0], s_tilde, cid)
    return _dsm(energy_score(psi, nu_fn, s_tilde, b[:, 0], cid), s_tilde, s_next, torch.sqrt(1.0 - b), b)


def _corrupt(s: Tensor, a: Tensor, s_next: Tensor, eps: Tensor, sched: Schedule, k: int | Tensor,
             cid: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """s~' = sqrt(alpha_bar_k) s' + sqrt(1 - alpha_bar_k) eps (ddpm.noise) and the levels beta^k = 1 - alpha_bar_k.

    Returns s~' (B, ds), beta^k (B,), and sqrt(1 - beta^k), beta^k as (B, 1) columns from the schedule's tables.
    """
    for name, t in (("s", s), ("a", a), ("s_next", s_next), ("eps", eps)):
        batch(t, cid, name)
    B = s_next.shape[0]
    require(s.shape[0] == B and a.shape[0] == B, cid,
            f"s, a and s_next must have the same batch size, got {tuple(s.shape)}, {tuple(a.shape)}, "
            f"{tuple(s_next.shape)}")
    require(eps.shape == s_next.shape, cid,
            f"eps must have the shape of s_next {tuple(s_next.shape)}, got {tuple(eps.shape)}")
    kk = sched.steps(k, B, cid)
    s_tilde = ddpm.noise(s_next, eps, sched, kk)
    level = at(sched.one_minus_alpha_bar, kk)
    return s_tilde, level[:, 0], at(sched.sqrt_alpha_bar, kk), level


def _psi(psi_fn: PsiFn, s: Tensor, a: Tensor, cid: str) -> Tensor:
    psi = psi_fn(s, a)
    require(psi.ndim == 2 and psi.shape[0] == s.shape[0], cid,
            f"psi_fn returned shape {tuple(psi.shape)}, expected ({s.shape[0]}, m)")
    return finite(psi, cid, "psi_fn(s, a)")


def train_step(psi_fn: PsiFn, grad_nu_fn: GradNuFn, s: Tensor, a: Tensor, s_next: Tensor, eps: Tensor,
               sched: Schedule, k: int | Tensor) -> Tensor:
    """Clause ``diffsr.train_step``: L = mean_b ||psi_b^T grad nu(s~'_b; b_k) + (s~'_b - sqrt(1 - b_k) s'_b) / b_k||^2.

    Here b_k = beta^{k_b}, the paper's noise level of row b.

    beta^k = 1 - alpha_bar_k and s~' = ddpm.noise(s', eps, sched, k); the caller draws k ~ U{1..K}
    and eps ~ N(0, I). grad_nu_fn is a network that outputs the Jacobian (B, m, ds) directly, as
    the official code's zeta network (and the spec's signature): one forward pass per step. The
    target uses sqrt(alpha_bar_k) from the schedule, the very coefficient of the corruption, so
    s~' - sqrt(1 - beta^k) s' carries no cancellation error. Returns a 0-d tensor (differentiable).
    For an energy network nu(s~'; beta) use :func:`train_step_energy`.
    """
    cid = "diffsr.train_step"
    s_tilde, level, sqrt_keep, beta = _corrupt(s, a, s_next, eps, sched, k, cid)
    psi = _psi(psi_fn, s, a, cid)
    B, m = psi.shape
    grad_nu = grad_nu_fn(s_tilde, level)
    require(tuple(grad_nu.shape) == (B, m, s_next.shape[1]), cid,
            f"grad_nu_fn returned shape {tuple(grad_nu.shape)}, expected {(B, m, s_next.shape[1])}")
    finite(grad_nu, cid, "grad_nu_fn(s_tilde, beta)")
    return _dsm(model_score(psi, grad_nu), s_tilde, s_next, sqrt_keep, beta).mean()


def train_step_energy(psi_fn: PsiFn, nu_fn: NuFn, s: Tensor, a: Tensor, s_next: Tensor, eps: Tensor,
                      sched: Schedule, k: int | Tensor) -> Tensor:
    """diffsr.train_step with the energy network nu_fn(s~', beta) -> (B, m): psi^T grad nu by one VJP.

    Same objective and corruption as :func:`train_step`; the model score is
    grad_{s~'} (psi^T nu(s~'; beta^k)) (:func:`energy_score`), differentiable in both networks'
    parameters (double backward). Returns a 0-d tensor.
    """
    cid = "diffsr.train_step"
    s_tilde, level, sqrt_keep, beta = _corrupt(s, a, s_next, eps, sched, k, cid)
    psi = _psi(psi_fn, s, a, cid)
    return _dsm(energy_score(psi, nu_fn, s_tilde, level, cid), s_tilde, s_next, sqrt_keep, beta).mean()


# ---- online RL with the features (Algorithm 2) ------------------------------------------


def critic(psi: Tensor, omegas: Tensor, phases: Tensor, amplitude: float, hidden_w: Tensor | None,
           hidden_b: Tensor | None, out_w: Tensor, out_b: Tensor) -> Tensor:
    """Clause ``diffsr.critic``: Q_i = w_i^T h_i + d_i, h_i = elu(W_i z_i + c_i) or z_i, z_i = A cos(omega_i psi + b_i).

    psi (B, m) is a constant of the critic (the caller detaches it); omegas (n, D, m), phases (n, D),
    hidden_w (n, H, D) and hidden_b (n, H), or both None for the linear head of the deck's spectral
    Q = phi^T w; out_w (n, H) (or (n, D)), out_b (n,). Returns (n, B), the layout of the other clauses.
    Each critic is its own matrix product (no batched einsum), so a critic built from nn.Linear layers
    gives the same numbers.
    """
    cid = "diffsr.critic"
    batch(psi, cid, "psi")
    m = psi.shape[1]
    require(omegas.ndim == 3 and omegas.shape[0] >= 1 and omegas.shape[1] >= 1 and omegas.shape[2] == m, cid,
            f"omegas must have shape (n_critics, D, {m}) with n_critics, D >= 1, got {tuple(omegas.shape)}")
    n, D = omegas.shape[0], omegas.shape[1]
    require(tuple(phases.shape) == (n, D), cid, f"phases must have shape ({n}, {D}), got {tuple(phases.shape)}")
    A = scalar(amplitude, cid, "amplitude", 0.0, _INF)
    require(A > 0.0, cid, f"amplitude must be > 0, got {A!r}")
    require((hidden_w is None) == (hidden_b is None), cid, "hidden_w and hidden_b are both given or both None")
    width = D
    if hidden_w is not None and hidden_b is not None:
        require(hidden_w.ndim == 3 and hidden_w.shape[0] == n and hidden_w.shape[1] >= 1 and hidden_w.shape[2] == D,
                cid, f"hidden_w must have shape ({n}, H, {D}) with H >= 1, got {tuple(hidden_w.shape)}")
        width = hidden_w.shape[1]
        require(tuple(hidden_b.shape) == (n, width), cid,
                f"hidden_b must have shape ({n}, {width}), got {tuple(hidden_b.shape)}")
    require(tuple(out_w.shape) == (n, width), cid, f"out_w must have shape ({n}, {width}), got {tuple(out_w.shape)}")
    require(tuple(out_b.shape) == (n,), cid, f"out_b must have shape ({n},), got {tuple(out_b.shape)}")
    params = {"omegas": omegas, "phases": phases, "hidden_w": hidden_w, "hidden_b": hidden_b, "out_w": out_w,
              "out_b": out_b}
    _finite_all(cid, {k: t for k, t in params.items() if t is not None})
    qs = []
    for i in range(n):
        h = A * torch.cos(psi @ omegas[i].T + phases[i])
        if hidden_w is not None and hidden_b is not None:
            h = torch.nn.functional.elu(torch.nn.functional.linear(h, hidden_w[i], hidden_b[i]))
        qs.append(torch.nn.functional.linear(h, out_w[i].unsqueeze(0), out_b[i].unsqueeze(0)).squeeze(-1))
    return torch.stack(qs)


def td_target(r: Tensor, done: Tensor, q_next: Tensor, gamma: float, alpha: float | Tensor = 0.0,
              log_pi_next: Tensor | None = None) -> Tensor:
    """Clause ``diffsr.td_target``: y = r + gamma (1 - d) (min_i Q_target_i(s', a') - alpha log pi(a' | s')).

    q_next (n_critics, B); done (B,) of 0/1 (float or bool); alpha a float or a 0-d tensor. Returns (B,).
    Callers compute it under ``torch.no_grad()`` (or pass target-network values): y is a constant
    of the critic loss.
    """
    cid = "diffsr.td_target"
    q = _critics(q_next, cid, "q_next")
    B = q.shape[1]
    vector(r, B, cid, "r")
    require(tuple(done.shape) == (B,), cid, f"done must have shape ({B},), got {tuple(done.shape)}")
    d = done.to(r.dtype)
    require_values((d == 0) | (d == 1), cid, "done must be 0 or 1")
    g = discount(gamma, cid)
    return r + g * (1.0 - d) * _soft_min(q, alpha, log_pi_next, cid, "log_pi_next")


def critic_loss(q: Tensor, y: Tensor) -> Tensor:
    """Clause ``diffsr.critic_loss``: sum_i (Q_i(s, a) - y)^2 per row, (B,); y is detached (a constant target).

    The agent's loss is its batch mean (the official code's reduction).
    """
    cid = "diffsr.critic_loss"
    qq = _critics(q, cid, "q")
    vector(y, qq.shape[1], cid, "y")
    return torch.sum((qq - y.detach()) ** 2, dim=0)


def policy_objective(q: Tensor, alpha: float | Tensor = 0.0, log_pi: Tensor | None = None) -> Tensor:
    """Clause ``diffsr.policy_objective``: J = min_i Q_i(s, a) - alpha log pi(a | s) per row, a ~ pi(. | s) (maximised).

    Differentiable in q and log_pi (the actor's reparameterised action and log-density); the
    actor loss is -J.mean(). alpha a float or a 0-d tensor (detach a learned temperature). Returns (B,).
    """
    cid = "diffsr.policy_objective"
    return _soft_min(_critics(q, cid, "q"), alpha, log_pi, cid, "log_pi")
