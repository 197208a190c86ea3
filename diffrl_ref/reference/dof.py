"""Diffusion factorisation for offline multi-agent RL (spec family ``dof``).

DoF (Li et al., ICLR 2025) factorises a centralised diffusion model over the joint data x_tot
of N agents into N per-agent models: the joint noise is eps_tot = f(eps_1, ..., eps_N) and the
joint noise prediction eps_theta_tot = f(eps_theta_1(x_1^k, k), ..., eps_theta_N(x_N^k, k)),
so training is centralised (Algorithm 1) and sampling decentralised (Algorithm 2): each agent
runs the DDPM reverse chain with its own network. Agent data are batches of shape (B, N, d);
joint vectors have shape (B, N*d), agent i occupying columns i*d .. (i+1)*d - 1 (0-based i).
Every step reuses verified clauses: ``ddpm.noise``, ``ddpm.reverse_step``, ``ddpm.simple_loss``,
``qmix.mixer``, ``diffusion_ql.q_loss`` and ``decision_diffuser.dropout_loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import ddpm, decision_diffuser, diffusion_ql, qmix
from ._checks import Array, DomainError, as_batch, as_betas, as_f64, as_step, require

#: An agent's noise-prediction network: eps_fn(x_i (B, d), k (B,) int) -> (B, d).
AgentEpsFn = Callable[[Array, NDArray[np.int64]], ArrayLike]
#: A conditional one (DoF as planner): eps_fn(x_i (B, d), k (B,) int, c (B, dy)) -> (B, d).
CondEpsFn = Callable[[Array, NDArray[np.int64], Array], ArrayLike]

NOISE_MODES = ("concat", "wconcat")
DATA_MODES = ("concat", "wconcat", "atten", "qmix")


def _agents(x: ArrayLike, cid: str, name: str) -> Array:
    a = as_f64(x, cid, name)
    require(a.ndim == 3 and a.shape[1] >= 1 and a.shape[2] >= 1, cid,
            f"{name} must have shape (B, N, d) with N, d >= 1, got {a.shape}")
    return a


def _agent_weights(mode: str, weights: ArrayLike | None, N: int, cid: str) -> Array:
    """w_1..w_N: ones for Concat; given, finite and nonzero (f invertible) for WConcat."""
    require(mode in NOISE_MODES, cid, f"mode must be one of {NOISE_MODES}, got {mode!r}")
    if mode == "concat":
        require(weights is None, cid, "Concat takes no weights (pass mode='wconcat' for w_i x_i)")
        return np.ones(N)
    if weights is None:
        raise DomainError(cid, "WConcat needs weights w_1..w_N")
    w = as_f64(weights, cid, "weights")
    require(w.shape == (N,), cid, f"weights must have shape (N,) = ({N},), got {w.shape}")
    require(bool(np.all(w != 0)), cid, "every w_i must be nonzero (WConcat must be invertible)")
    return w


def _concat(parts: Array, w: Array) -> Array:
    """x_tot[:, i d : (i+1) d] = w_i x_i."""
    B, N, d = parts.shape
    return (w[None, :, None] * parts).reshape(B, N * d)


def _split(x_tot: Array, w: Array, d: int) -> Array:
    """The inverse of _concat: x_i = x_tot[:, i d : (i+1) d] / w_i, shape (B, N, d)."""
    return x_tot.reshape(x_tot.shape[0], w.size, d) / w[None, :, None]


def noise_factorisation(eps_agents: ArrayLike, mode: str = "concat", weights: ArrayLike | None = None) -> Array:
    """Clause ``dof.noise_factorisation``: eps_tot = f(eps_1..eps_N), f = Concat or WConcat."""
    cid = "dof.noise_factorisation"
    e = _agents(eps_agents, cid, "eps_agents")
    return _concat(e, _agent_weights(mode, weights, e.shape[1], cid))


def _softmax_rows(scores: Array) -> Array:
    z = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
    w: Array = z / np.sum(z, axis=-1, keepdims=True)
    return w


def data_factorisation(
    x_agents: ArrayLike,
    mode: str = "concat",
    weights: ArrayLike | None = None,
    s: ArrayLike | None = None,
    hyper: qmix.Hypernetworks | None = None,
) -> Array:
    """Clause ``dof.data_factorisation``: x_tot = h(x_1..x_N), h = Concat, WConcat, Atten or QMIX."""
    cid = "dof.data_factorisation"
    x = _agents(x_agents, cid, "x_agents")
    B, N, d = x.shape
    require(mode in DATA_MODES, cid, f"mode must be one of {DATA_MODES}, got {mode!r}")
    require((mode == "qmix") == (s is not None or hyper is not None), cid,
            "s and hyper are required for mode 'qmix' and only for it")
    if mode in NOISE_MODES:
        return _concat(x, _agent_weights(mode, weights, N, cid))
    if mode == "atten":
        if weights is None:
            raise DomainError(cid, "Atten needs attention scores of shape (N, N) or (B, N, N)")
        scores = as_f64(weights, cid, "weights")
        require(scores.shape in ((N, N), (B, N, N)), cid,
                f"attention scores must have shape ({N}, {N}) or ({B}, {N}, {N}), got {scores.shape}")
        w = _softmax_rows(np.broadcast_to(scores, (B, N, N)))  # w_ij = softmax_j(scores_ij)
        mixed: Array = np.einsum("bij,bjc->bic", w, x).reshape(B, N * d)
        return mixed
    require(weights is None, cid, "mode 'qmix' takes hypernetworks, not weights")
    if s is None or hyper is None:
        raise DomainError(cid, "mode 'qmix' needs both s and hyper")
    ss = as_batch(s, cid, "s")
    require(ss.shape[0] == B, cid, f"s must have {B} rows, got shape {ss.shape}")
    rows = x.transpose(0, 2, 1).reshape(B * d, N)  # row b*d + c holds (x_1[c], ..., x_N[c]) of sample b
    return qmix.mixer(rows, np.repeat(ss, d, axis=0), hyper).reshape(B, d)


def _eps_call(fn: Callable[..., ArrayLike], x: Array, steps: NDArray[np.int64], cid: str, i: int,
              *cond: Array) -> Array:
    out = as_f64(fn(x, steps.copy(), *cond), cid, f"eps_fns[{i}] output")
    require(out.shape == x.shape, cid, f"eps_fns[{i}] must return shape {x.shape}, got {out.shape}")
    return out


def _networks(eps_fns: Sequence[Callable[..., ArrayLike]], N: int, cid: str) -> None:
    require(len(eps_fns) == N and all(callable(f) for f in eps_fns), cid,
            f"eps_fns must be N = {N} callables, one per agent")


def _loss(x0_tot: ArrayLike, k: ArrayLike, eps: ArrayLike, eps_fns: Sequence[Callable[..., ArrayLike]],
          betas: ArrayLike, mode: str, weights: ArrayLike | None, cid: str) -> Array:
    """Algorithm 1, lines 3-8, as a value: ||eps_tot - f(eps_theta_i(x_i^k, k))||^2 per row."""
    e = _agents(eps, cid, "eps")
    B, N, d = e.shape
    x0 = as_batch(x0_tot, cid, "x0_tot")
    require(x0.shape == (B, N * d), cid, f"x0_tot must have shape (B, N*d) = ({B}, {N * d}), got {x0.shape}")
    _networks(eps_fns, N, cid)
    beta = as_betas(betas, cid)
    steps = np.broadcast_to(as_step(k, beta.size, cid, batch=B), (B,)).astype(np.int64)
    w = _agent_weights(mode, weights, N, cid)
    eps_tot = _concat(e, w)                                   # eps_tot = f(eps_1..eps_N)
    x_tot_k = ddpm.noise(x0, eps_tot, beta, steps)            # x_tot^k from x^0 and eps_tot
    x_k = _split(x_tot_k, w, d)                               # x_i^k: agent i's part of x_tot^k
    eps_hat = np.stack([_eps_call(eps_fns[i], x_k[:, i], steps, cid, i) for i in range(N)], axis=1)
    return ddpm.simple_loss(eps_tot, _concat(eps_hat, w), beta, steps)


def train_step(
    x0_tot: ArrayLike,
    k: ArrayLike,
    eps: ArrayLike,
    eps_fns: Sequence[AgentEpsFn],
    betas: ArrayLike,
    mode: str = "concat",
    weights: ArrayLike | None = None,
) -> Array:
    """Clause ``dof.train_step``: ||f(eps_1..eps_N) - f(eps_theta_1(x_1^k, k), ...)||^2 per row (Alg. 1)."""
    return _loss(x0_tot, k, eps, eps_fns, betas, mode, weights, "dof.train_step")


def _noise_steps(z: ArrayLike, shape: tuple[int, ...], cid: str, name: str) -> Array:
    zz = as_f64(z, cid, name)
    require(zz.shape == shape, cid, f"{name} must have shape (K, ...) = {shape}, got {zz.shape}")
    return zz


def decentralised_sample(
    x_K: ArrayLike,
    eps_fns: Sequence[AgentEpsFn],
    betas: ArrayLike,
    z: ArrayLike,
    variance: str = "beta",
) -> Array:
    """Clause ``dof.decentralised_sample``: each agent runs DDPM's reverse chain with its own eps_theta_i (Alg. 2)."""
    cid = "dof.decentralised_sample"
    x = _agents(x_K, cid, "x_K").copy()
    B, N, d = x.shape
    _networks(eps_fns, N, cid)
    beta = as_betas(betas, cid)
    K = beta.size
    zz = _noise_steps(z, (K, B, N, d), cid, "z")
    for k in range(K, 0, -1):
        steps = np.full(B, k, dtype=np.int64)
        for i in range(N):  # agent i sees only x_i^k, its own network and its own noise z[k-1][:, i]
            e_i = _eps_call(eps_fns[i], x[:, i], steps, cid, i)
            x[:, i] = ddpm.reverse_step(x[:, i], e_i, beta, k, zz[k - 1][:, i], variance)
    return x


def igd(
    x_tot_K: ArrayLike,
    eps_fns: Sequence[AgentEpsFn],
    betas: ArrayLike,
    z_tot: ArrayLike,
    mode: str = "concat",
    weights: ArrayLike | None = None,
    variance: str = "beta",
) -> Array:
    """Clause ``dof.igd``: the centralised chain on x_tot with eps_hat_tot = f(eps_theta_i(x_i^k, k))."""
    cid = "dof.igd"
    x = as_batch(x_tot_K, cid, "x_tot_K").copy()
    B, Nd = x.shape
    N = len(eps_fns)
    require(N >= 1 and Nd % N == 0, cid, f"x_tot_K has {Nd} columns, not a multiple of N = {N} agents")
    _networks(eps_fns, N, cid)
    d = Nd // N
    w = _agent_weights(mode, weights, N, cid)
    beta = as_betas(betas, cid)
    K = beta.size
    zz = _noise_steps(z_tot, (K, B, Nd), cid, "z_tot")
    for k in range(K, 0, -1):
        steps = np.full(B, k, dtype=np.int64)
        x_k = _split(x, w, d)
        eps_hat = np.stack([_eps_call(eps_fns[i], x_k[:, i], steps, cid, i) for i in range(N)], axis=1)
        x = ddpm.reverse_step(x, _concat(eps_hat, w), beta, k, zz[k - 1], variance)
    return x


def policy_loss(
    x0_tot: ArrayLike,
    k: ArrayLike,
    eps: ArrayLike,
    eps_fns: Sequence[AgentEpsFn],
    betas: ArrayLike,
    q_new: ArrayLike,
    eta: float,
    mode: str = "concat",
    weights: ArrayLike | None = None,
    q_norm: ArrayLike | None = None,
) -> Array:
    """Clause ``dof.policy_loss``: L_BC + sum_i L_q,i per row, L_q,i = -eta Q_i(o_i, a_i^0) / E|Q_i| (Diffusion-QL)."""
    cid = "dof.policy_loss"
    bc = _loss(x0_tot, k, eps, eps_fns, betas, mode, weights, cid)
    B, N = bc.size, len(eps_fns)
    q = as_batch(q_new, cid, "q_new")
    require(q.shape == (B, N), cid, f"q_new must have shape (B, N) = ({B}, {N}), got {q.shape}")
    qn = q if q_norm is None else as_batch(q_norm, cid, "q_norm")
    require(qn.shape[1] == N, cid, f"q_norm must have shape (M, N) with N = {N}, got {qn.shape}")
    require(bool(np.all(np.mean(np.abs(qn), axis=0) > 0)), cid, "the normaliser E|Q_i| must be > 0 for every agent")
    # Each agent's Q-learning term is Diffusion-QL's L_q with its own critic's normaliser.
    l_q = sum(diffusion_ql.q_loss(q[:, i], qn[:, i], eta) for i in range(N))
    out: Array = bc + l_q
    return out


def planner_loss(
    x0_tot: ArrayLike,
    k: ArrayLike,
    eps: ArrayLike,
    eps_fns: Sequence[CondEpsFn],
    betas: ArrayLike,
    y: ArrayLike,
    drop: ArrayLike,
    mode: str = "concat",
    weights: ArrayLike | None = None,
    empty: ArrayLike | None = None,
) -> Array:
    """Clause ``dof.planner_loss``: ||eps_tot - f(eps_theta_i(x_i^k, (1 - b) y + b empty, k))||^2 per row."""
    cid = "dof.planner_loss"
    e = _agents(eps, cid, "eps")
    B, N, d = e.shape
    x0 = as_batch(x0_tot, cid, "x0_tot")
    require(x0.shape == (B, N * d), cid, f"x0_tot must have shape (B, N*d) = ({B}, {N * d}), got {x0.shape}")
    _networks(eps_fns, N, cid)
    w = _agent_weights(mode, weights, N, cid)
    yy = as_batch(y, cid, "y")
    require(yy.shape[0] == B, cid, f"y must have {B} rows, got shape {yy.shape}")
    b = np.asarray(drop)
    require(b.shape == (B,), cid, f"drop must have shape ({B},), got {b.shape}")
    require(bool(np.all((b == 0) | (b == 1))), cid, "drop entries must be 0 (keep y) or 1 (use empty)")
    nothing = np.zeros(yy.shape[1]) if empty is None else as_f64(empty, cid, "empty")
    require(nothing.shape == (yy.shape[1],), cid, f"empty must have shape ({yy.shape[1]},), got {nothing.shape}")
    return _dropout_loss(x0, e, w, eps_fns, betas, k, yy, b.astype(np.float64), nothing, cid)


def _dropout_loss(x0: Array, e: Array, w: Array, eps_fns: Sequence[Callable[..., ArrayLike]], betas: ArrayLike,
                  k: ArrayLike, y: Array, b: Array, empty: Array, cid: str) -> Array:
    """Decision Diffuser's condition-dropout loss on the joint data, with eps_tot = f(eps_1..eps_N)."""
    B, N, d = e.shape

    def eps_tot_hat(x_k: Array, steps: NDArray[np.int64], c: Array) -> Array:
        """The centralised network f(eps_theta_i(x_i^k, k, c)) on x_tot^k viewed as (B, N, d)."""
        parts = _split(x_k.reshape(B, N * d), w, d)
        eps_hat = np.stack([_eps_call(eps_fns[i], parts[:, i], steps, cid, i, c) for i in range(N)], axis=1)
        return _concat(eps_hat, w).reshape(B, N, d)

    return decision_diffuser.dropout_loss(x0.reshape(B, N, d), _concat(e, w).reshape(B, N, d), betas, k, y, b,
                                          eps_tot_hat, np.broadcast_to(empty, y.shape))
