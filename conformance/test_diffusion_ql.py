"""Conformance: spec family ``diffusion_ql`` (Wang, Hunt and Zhou, ICLR 2023).

Networks are the deterministic NumPy MLPs of diffrl_ref.suite.networks, rebuilt here from their
seed so the tolerance rules can use an upper bound of their Lipschitz constant. alpha_bar is
recomputed in float64 from the (rounded) betas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffrl_ref.reference import ddpm as ddpm_ref
from diffrl_ref.reference import diffusion_ql as ref
from diffrl_ref.suite import networks
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.gaussian_oracle import GaussianData, propagate_affine
from diffrl_ref.suite.stats import assert_gaussian_moments
from diffrl_ref.suite.strategies import TINY, betas, finite

F = np.ndarray
VARIANCES = ("beta", "beta_tilde")
MISH_SLOPE = 1.1  # sup |mish'(x)| = 1.0998...
_N = 20000


# ---- helpers --------------------------------------------------------------------------


def _f64(x: Any) -> F:
    return np.asarray(x, dtype=np.float64)


def _ab(b: F) -> F:
    return np.concatenate([[1.0], np.cumprod(1.0 - b)])


def _snap(v: float) -> float:
    """|v| < TINY becomes 0: no subnormal inputs in float32 (strategies.TINY; the rules are relative)."""
    return 0.0 if abs(v) < TINY else v


def _batch(B: int, d: int, scale: float) -> st.SearchStrategy[F]:
    return hnp.arrays(np.float64, (B, d), elements=finite(-scale, scale).map(_snap))


def _lipschitz(mlp: networks.MLP, first_rows: slice) -> float:
    """Upper bound of the MLP's Lipschitz constant in the inputs ``first_rows`` (2-norm)."""
    (w1, _), *rest = mlp.params
    bound = float(np.linalg.norm(w1[first_rows], 2))
    for w, _ in rest:
        bound *= MISH_SLOPE * float(np.linalg.norm(w, 2))
    return bound


def _policy_net(seed: int, da: int, ds: int, scale: float = 1.0) -> tuple[Callable[..., F], float]:
    """eps_fn(a_k, k, s) and its Lipschitz bound in a_k."""
    mlp = networks.MLP.init(seed, [da + 8 + ds, 16, 16, da], "mish", scale)
    return networks.eps_network(seed, da, ds, scale=scale), _lipschitz(mlp, slice(0, da))


def _critic(seed: int, ds: int, da: int) -> tuple[Callable[[F, F], F], float]:
    """q_fn(s, a) and its Lipschitz bound in a."""
    mlp = networks.MLP.init(seed, [ds + da, 16, 16, 1], "mish", 1.0)
    return networks.q_network(seed, ds, da), _lipschitz(mlp, slice(ds, ds + da))


def _steps(k: Any, B: int) -> F:
    return np.broadcast_to(np.asarray(k), (B,)).astype(np.int64)


def _bc_u(a: F, e: F, e_hat: F, L: Any) -> F:
    """u of the bc_loss rule: per-row norm of |eps| + |eps_hat| + L (|a| + |eps|)."""
    return _f64(np.linalg.norm(np.abs(e) + np.abs(e_hat) + np.asarray(L) * (np.abs(a) + np.abs(e)), axis=1))


@st.composite
def _case(draw: st.DrawFn, max_K: int = 12, per_row: bool = True) -> dict[str, Any]:
    """A schedule, a step per row (or one), actions, noise and states, and a network seed."""
    b = draw(betas(max_K=max_K))
    B = draw(st.integers(1, 5))
    da = draw(st.integers(1, 3))
    ds = draw(st.integers(1, 3))
    if per_row and draw(st.booleans()):
        k: Any = np.asarray(draw(st.lists(st.integers(1, b.size), min_size=B, max_size=B)), dtype=np.int64)
    else:
        k = draw(st.integers(1, b.size))
    return {"b": b, "k": k, "a": draw(_batch(B, da, 3.0)), "eps": draw(_batch(B, da, 3.0)),
            "s": draw(_batch(B, ds, 3.0)), "seed": draw(st.integers(0, 2**16))}


def _bound(lo: float, hi: float) -> st.SearchStrategy[float]:
    """A bound (max_action, w_max) representable in every dtype (bfloat16 values are), so an
    implementation's clip at its own rounding of the bound is the clip at the bound itself."""
    return finite(lo, hi).map(lambda v: float(round_to("bfloat16", v)))


def _rounded(impl: Any, c: dict[str, Any], *names: str) -> list[F]:
    return [round_to(impl.dtype, c[n]) for n in names]


# ---- diffusion_ql.bc_loss -------------------------------------------------------------


@clause("diffusion_ql.bc_loss", "true_noise_residual")
@given(c=_case(), zero=st.booleans(), data=st.data())
def test_bc_loss_true_noise_residual(impl: Any, clause_id: str, c: dict[str, Any], zero: bool,
                                     data: st.DataObject) -> None:
    b, a, e = _rounded(impl, c, "b", "a", "eps")
    B, da = a.shape
    delta = np.zeros_like(a) if zero else data.draw(_batch(B, da, 2.0))
    ab = _ab(b)

    def oracle(x: F, kk: Any, s: F) -> F:
        # The state is the clean action: the true noise is recovered from x = a_k.
        abk = ab[np.asarray(kk)][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):  # a wrong step k = 0 gives alpha_bar = 1
            return _f64((np.asarray(x) - np.sqrt(abk) * s) / np.sqrt(1.0 - abk) + delta)

    got = need(impl, clause_id)(a, a, oracle, b, c["k"], e)
    L = 1.0 / np.sqrt(1.0 - ab[_steps(c["k"], B)])[:, None]
    assert_close(clause_id, got, np.sum(delta**2, axis=1), dtype=impl.dtype,
                 what="L_d = ||delta|| ^2 for eps_hat = eps + delta", K=b.size, d=da, scale=0.0,
                 u=_bc_u(a, e, e + delta, L), inputs={"k": c["k"]})


@clause("diffusion_ql.bc_loss", "network_inputs")
@given(c=_case())
def test_bc_loss_network_inputs(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, a, e, s = _rounded(impl, c, "b", "a", "eps", "s")
    B, da = a.shape
    net, _ = _policy_net(c["seed"], da, s.shape[1])
    calls: list[tuple[F, F, F]] = []

    def recording(x: F, kk: Any, st_: F) -> F:
        calls.append((_f64(x).copy(), np.asarray(kk).copy(), _f64(st_).copy()))
        return net(x, kk, st_)

    need(impl, clause_id)(a, s, recording, b, c["k"], e)
    assert_that(len(calls) >= 1, clause_id, "the network was never called")
    x, kk, s_seen = calls[-1]
    abk = _ab(b)[_steps(c["k"], B)][:, None]
    assert_that(np.array_equal(np.broadcast_to(kk, (B,)), _steps(c["k"], B)), clause_id,
                f"network saw steps {np.asarray(kk).tolist()}, expected the 1-based k {_steps(c['k'], B).tolist()}")
    assert_that(s_seen.shape == s.shape and np.array_equal(s_seen, s), clause_id, "network saw altered states")
    assert_close(clause_id, x, np.sqrt(abk) * a + np.sqrt(1.0 - abk) * e, dtype=impl.dtype,
                 what="network input a_k = sqrt(ab_k) a + sqrt(1 - ab_k) eps", K=b.size, d=da,
                 scale=np.abs(a) + np.abs(e), u=0.0, inputs={"k": c["k"]})


@clause("diffusion_ql.bc_loss", "matches_reference")
@given(c=_case())
def test_bc_loss_matches_reference(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, a, e, s = _rounded(impl, c, "b", "a", "eps", "s")
    net, L = _policy_net(c["seed"], a.shape[1], s.shape[1])
    steps = _steps(c["k"], a.shape[0])
    abk = _ab(b)[steps][:, None]
    e_hat = net(np.sqrt(abk) * a + np.sqrt(1.0 - abk) * e, steps, s)
    assert_close(clause_id, need(impl, clause_id)(a, s, net, b, c["k"], e), ref.bc_loss(a, s, net, b, c["k"], e),
                 dtype=impl.dtype, K=b.size, d=a.shape[1], scale=0.0, u=_bc_u(a, e, e_hat, L), inputs={"k": c["k"]})


_B3 = np.array([0.1, 0.2, 0.3])
_X = np.ones((2, 2))
_S = np.ones((2, 3))
_NAN = np.full((2, 2), np.nan)


def _zero_fn(x: F, k: Any, s: Any = None) -> F:
    return np.zeros_like(_f64(x))


def _nan_fn(x: F, k: Any, s: Any = None) -> F:
    return np.full_like(_f64(x), np.nan)


def _narrow_fn(x: F, k: Any, s: Any = None) -> F:
    return np.zeros((np.asarray(x).shape[0], 1))


_BAD_BC = [
    (_X, _S, _zero_fn, _B3, 0, _X), (_X, _S, _zero_fn, _B3, 4, _X), (_X, _S, _zero_fn, _B3, 1.5, _X),
    (_NAN, _S, _zero_fn, _B3, 1, _X), (_X, _S, _zero_fn, _B3, 1, _NAN),
    (_X, np.full((2, 3), np.nan), _zero_fn, _B3, 1, _X),
    (_X, _S, _zero_fn, _B3, 1, np.ones((2, 3))), (_X, np.ones((3, 3)), _zero_fn, _B3, 1, _X),
    (_X, _S, _nan_fn, _B3, 1, _X), (_X, _S, _narrow_fn, _B3, 1, _X),
    (_X, _S, _zero_fn, np.array([0.1, 1.0]), 1, _X), (_X, _S, _zero_fn, np.array([0.0, 0.1]), 1, _X),
]


@clause("diffusion_ql.bc_loss", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_BC))))
def test_bc_loss_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_BC[i])


# ---- diffusion_ql.sample_action -------------------------------------------------------


def _coef(b: F, k: int) -> dict[str, float]:
    ab = _ab(b)
    beta = float(b[k - 1])
    return {"beta": beta, "alpha": 1.0 - beta, "ab": float(ab[k]), "ab_prev": float(ab[k - 1]),
            "c1": float(np.sqrt(ab[k - 1]) * beta / (1.0 - ab[k])),
            "c2": float(np.sqrt(1.0 - beta) * (1.0 - ab[k - 1]) / (1.0 - ab[k])),
            "gap": float(1.0 - ab[max(k - 1, 1)])}


def _sigma(c: dict[str, float], k: int, variance: str) -> float:
    if k == 1:
        return 0.0
    s2 = c["beta"] if variance == "beta" else (1.0 - c["ab_prev"]) / (1.0 - c["ab"]) * c["beta"]
    return float(np.sqrt(s2))


def _posterior_chain(net: Callable[..., F], s: F, b: F, a_K: F, z: F, m: float | None, variance: str,
                     lip: float | Callable[[Any], Any]) -> tuple[F, F]:
    """The clipped chain in the posterior form (Ho et al. Eq. 7), float64, and the rule's scale.

    ``lip``: the network's Lipschitz bound in a^k, a number or a function of the step k.
    """
    x, scale = a_K.copy(), np.zeros_like(a_K)
    B = x.shape[0]
    for k in range(b.size, 0, -1):
        L = float(lip(k)) if callable(lip) else lip
        c = _coef(b, k)
        e_hat = _f64(net(x, np.full(B, k), s))
        x0 = (x - np.sqrt(1.0 - c["ab"]) * e_hat) / np.sqrt(c["ab"])
        x0c = x0 if m is None else np.clip(x0, -m, m)
        G = c["c2"] + c["c1"] * (1.0 + np.sqrt(1.0 - c["ab"]) * L) / np.sqrt(c["ab"])
        step = (np.abs(x) + np.abs(e_hat) + np.abs(x0) + np.abs(z[k - 1])) / (np.sqrt(c["alpha"]) * c["gap"])
        scale = G * scale + step + L * np.abs(x) * c["beta"] / (np.sqrt(1.0 - c["ab"]) * np.sqrt(c["alpha"]))
        x = c["c1"] * x0c + c["c2"] * x + _sigma(c, k, variance) * z[k - 1]
    return (x if m is None else np.clip(x, -m, m)), scale


@st.composite
def _sampling(draw: st.DrawFn, max_K: int = 10) -> dict[str, Any]:
    b = draw(betas(max_K=max_K))
    B = draw(st.integers(1, 5))
    da = draw(st.integers(1, 3))
    ds = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return {"b": b, "s": draw(_batch(B, ds, 3.0)), "a_K": rng.standard_normal((B, da)),
            "noises": rng.standard_normal((b.size, B, da)), "seed": draw(st.integers(0, 2**16)),
            "variance": draw(st.sampled_from(VARIANCES)), "m": draw(_bound(0.1, 1.5))}


@clause("diffusion_ql.sample_action", "reverse_chain_composition")
@given(c=_sampling())
def test_sample_action_composition(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, s, a_K, z = _rounded(impl, c, "b", "s", "a_K", "noises")
    B, da = a_K.shape
    net, L = _policy_net(c["seed"], da, s.shape[1])
    got = need(impl, clause_id)(s, net, b, a_K, z, None, c["variance"])  # first: a domain error names this clause
    x = a_K
    for k in range(b.size, 0, -1):  # the float64 reference step: a bug in ddpm.reverse_step does not fail this clause
        x = ddpm_ref.reverse_step(x, net(x, np.full(B, k), s), b, k, z[k - 1], c["variance"])
    _, scale = _posterior_chain(net, s, b, a_K, z, None, c["variance"], L)
    assert_close(clause_id, got, x, dtype=impl.dtype, what="sample = reverse_step composed k = K..1", K=b.size,
                 scale=scale, inputs={"variance": c["variance"]})


@clause("diffusion_ql.sample_action", "clip_denoised")
@given(c=_sampling())
def test_sample_action_clip_denoised(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, s, a_K, z = _rounded(impl, c, "b", "s", "a_K", "noises")
    net, L = _policy_net(c["seed"], a_K.shape[1], s.shape[1], scale=2.0)
    want, scale = _posterior_chain(net, s, b, a_K, z, c["m"], c["variance"], L)
    got = need(impl, clause_id)(s, net, b, a_K, z, c["m"], c["variance"])
    assert_close(clause_id, got, want, dtype=impl.dtype, what="posterior mean of clip(x0_hat) each step, final clip",
                 K=b.size, scale=scale, inputs={"max_action": c["m"], "variance": c["variance"]})


@clause("diffusion_ql.sample_action", "action_bounds")
@given(c=_sampling())
def test_sample_action_bounds(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, s, a_K, z = _rounded(impl, c, "b", "s", "a_K", "noises")
    net, _ = _policy_net(c["seed"], a_K.shape[1], s.shape[1], scale=3.0)
    m = c["m"]
    got = _f64(need(impl, clause_id)(s, net, b, 4.0 * a_K, z, m, c["variance"]))
    assert_that(bool(np.all(np.abs(got) <= m)), clause_id,
                f"action outside [-{m}, {m}]: max |a^0| = {np.max(np.abs(got))!r}")


@st.composite
def _gaussian(draw: st.DrawFn, max_d: int = 2) -> GaussianData:
    d = draw(st.integers(1, max_d))
    m = draw(st.lists(finite(-2.0, 2.0).map(_snap), min_size=d, max_size=d))
    s2 = draw(st.lists(finite(0.05, 3.0), min_size=d, max_size=d))
    return GaussianData.of(m, s2)


def _chain_law(data: GaussianData, b: F, variance: str) -> tuple[F, F]:
    ab = _ab(b)
    mean, var = np.zeros_like(data.mean), np.ones_like(data.var)
    for k in range(b.size, 0, -1):
        c = _coef(b, k)
        _, V = data.marginal(c["ab"])
        A = (1.0 - c["beta"] / V) / np.sqrt(c["alpha"])
        shift = c["beta"] * np.sqrt(ab[k]) * data.mean / (np.sqrt(c["alpha"]) * V)
        mean, var = propagate_affine(mean, var, A, shift, _sigma(c, k, variance) ** 2)
    return mean, var


@clause("diffusion_ql.sample_action", "exact_law")
@given(b=betas(max_K=10), data=_gaussian(), variance=st.sampled_from(VARIANCES))
def test_sample_action_exact_law(impl: Any, clause_id: str, b: F, data: GaussianData, variance: str) -> None:
    b = round_to(impl.dtype, b)
    ab = _ab(b)
    d = data.mean.size
    rng = np.random.default_rng(2023)
    a_K, z = rng.standard_normal((_N, d)), rng.standard_normal((b.size, _N, d))

    def eps_star(x: F, k: Any, s: F) -> F:
        return data.eps(_f64(x), ab[np.asarray(k)])

    got = _f64(need(impl, clause_id)(np.zeros((_N, 1)), eps_star, b, a_K, z, None, variance))
    mean, var = _chain_law(data, b, variance)
    assert_gaussian_moments(clause_id, got, mean, var, what=f"a^0 of the eps* policy, K={b.size}, variance={variance}")


@clause("diffusion_ql.sample_action", "matches_reference")
@given(c=_sampling(), clipped=st.booleans())
def test_sample_action_matches_reference(impl: Any, clause_id: str, c: dict[str, Any], clipped: bool) -> None:
    b, s, a_K, z = _rounded(impl, c, "b", "s", "a_K", "noises")
    net, L = _policy_net(c["seed"], a_K.shape[1], s.shape[1], scale=2.0)
    m = c["m"] if clipped else None
    _, scale = _posterior_chain(net, s, b, a_K, z, m, c["variance"], L)
    assert_close(clause_id, need(impl, clause_id)(s, net, b, a_K, z, m, c["variance"]),
                 ref.sample_action(s, net, b, a_K, z, m, c["variance"]), dtype=impl.dtype, K=b.size, scale=scale,
                 inputs={"max_action": str(m), "variance": c["variance"]})


_Z3 = np.zeros((3, 2, 2))
_BAD_SAMPLE: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((_S, _zero_fn, _B3, _NAN, _Z3), {}),
    ((np.full((2, 3), np.nan), _zero_fn, _B3, _X, _Z3), {}),
    ((_S, _zero_fn, _B3, _X, np.full((3, 2, 2), np.nan)), {}),
    ((_S, _zero_fn, _B3, _X, np.zeros((2, 2, 2))), {}),          # noises for K - 1 steps
    ((np.ones((3, 3)), _zero_fn, _B3, _X, _Z3), {}),             # states of another batch size
    ((_S, _zero_fn, _B3, _X, _Z3), {"max_action": 0.0}),
    ((_S, _zero_fn, _B3, _X, _Z3), {"max_action": -1.0}),
    ((_S, _zero_fn, _B3, _X, _Z3), {"variance": "learned"}),
    ((_S, _nan_fn, _B3, _X, _Z3), {}),
    ((_S, _narrow_fn, _B3, _X, _Z3), {}),
    ((_S, _zero_fn, np.array([0.1, 1.0, 0.2]), _X, _Z3), {}),
]


@clause("diffusion_ql.sample_action", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_SAMPLE))))
def test_sample_action_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_SAMPLE[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- diffusion_ql.q_loss and q_loss_grad ----------------------------------------------


@st.composite
def _q_case(draw: st.DrawFn) -> tuple[F, F, float]:
    B = draw(st.integers(1, 8))
    M = draw(st.integers(1, 8))
    mag = draw(st.sampled_from([1e-2, 1.0, 1e3]))
    q = mag * draw(hnp.arrays(np.float64, (B,), elements=finite(-1.0, 1.0).map(_snap)))
    qn = mag * draw(hnp.arrays(np.float64, (M,), elements=finite(-1.0, 1.0).map(_snap)))
    # The domain needs mean|q_norm| > 0; the margin of 1e-3 of the data's magnitude only keeps examples
    # off that boundary (every rule here is relative to |expected|, so no tolerance depends on it).
    assume(np.mean(np.abs(qn)) > 1e-3 * mag)
    return q, qn, _snap(draw(finite(0.0, 5.0)))


@clause("diffusion_ql.q_loss", "scale_invariant")
@given(case=_q_case(), c=st.floats(1e-3, 1e3))
def test_q_loss_scale_invariant(impl: Any, clause_id: str, case: tuple[F, F, float], c: float) -> None:
    q, qn = (round_to(impl.dtype, x) for x in case[:2])
    fn = need(impl, clause_id)
    want = _f64(fn(q, qn, case[2]))
    got = fn(round_to(impl.dtype, c * q), round_to(impl.dtype, c * qn), case[2])
    assert_close(clause_id, got, want, dtype=impl.dtype, what=f"L_q(c q, c q_norm) = L_q(q, q_norm), c={c:.3g}",
                 M=qn.size)


@clause("diffusion_ql.q_loss", "constant_critic")
@given(B=st.integers(1, 8), M=st.integers(1, 8), c=st.one_of(finite(-1e3, -1e-3), finite(1e-3, 1e3)),
       eta=finite(0.0, 5.0).map(_snap))
def test_q_loss_constant_critic(impl: Any, clause_id: str, B: int, M: int, c: float, eta: float) -> None:
    c = float(round_to(impl.dtype, c))
    got = need(impl, clause_id)(np.full(B, c), np.full(M, c), eta)
    assert_close(clause_id, got, np.full(B, -eta * np.sign(c)), dtype=impl.dtype, what="L_q = -eta sign(c)", M=M,
                 inputs={"c": c})


@clause("diffusion_ql.q_loss", "closed_form")
@given(case=_q_case())
def test_q_loss_closed_form(impl: Any, clause_id: str, case: tuple[F, F, float]) -> None:
    q, qn = (round_to(impl.dtype, x) for x in case[:2])
    eta = case[2]
    assert_close(clause_id, need(impl, clause_id)(q, qn, eta), -eta * q / np.mean(np.abs(qn)), dtype=impl.dtype,
                 what="-eta q_i / mean|q_norm|", M=qn.size)


@clause("diffusion_ql.q_loss", "matches_reference")
@given(case=_q_case())
def test_q_loss_matches_reference(impl: Any, clause_id: str, case: tuple[F, F, float]) -> None:
    q, qn = (round_to(impl.dtype, x) for x in case[:2])
    assert_close(clause_id, need(impl, clause_id)(q, qn, case[2]), ref.q_loss(q, qn, case[2]), dtype=impl.dtype,
                 M=qn.size)


_BAD_Q: list[tuple[Any, ...]] = [
    (np.array([1.0, np.nan]), np.ones(2), 1.0), (np.ones(2), np.array([np.inf, 1.0]), 1.0),
    (np.ones(2), np.zeros(3), 1.0), (np.ones(2), np.ones(2), -0.5), (np.ones((2, 1)), np.ones(2), 1.0),
    (np.ones(0), np.ones(2), 1.0), (np.ones(2), np.ones(0), 1.0), (np.ones(2), np.ones(2), np.nan),
]


@clause("diffusion_ql.q_loss", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_Q))))
def test_q_loss_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_Q[i])


@clause("diffusion_ql.q_loss_grad", "stop_gradient")
@given(case=_q_case())
def test_q_loss_grad_stop_gradient(impl: Any, clause_id: str, case: tuple[F, F, float]) -> None:
    q, qn = (round_to(impl.dtype, x) for x in case[:2])
    _, g_norm = need(impl, clause_id)(q, qn, case[2])
    g = _f64(g_norm)
    assert_that(g.shape == qn.shape and bool(np.all(g == 0.0)), clause_id,
                f"gradient reaches the normaliser: d L_q / d q_norm = {g}")


@clause("diffusion_ql.q_loss_grad", "closed_form")
@given(case=_q_case())
def test_q_loss_grad_closed_form(impl: Any, clause_id: str, case: tuple[F, F, float]) -> None:
    q, qn = (round_to(impl.dtype, x) for x in case[:2])
    eta = case[2]
    g_q, _ = need(impl, clause_id)(q, qn, eta)
    assert_close(clause_id, g_q, np.full(q.shape, -eta / (q.size * np.mean(np.abs(qn)))), dtype=impl.dtype,
                 what="d mean(L_q) / d q_i = -eta / (B mean|q_norm|)", M=qn.size)


@clause("diffusion_ql.q_loss_grad", "matches_reference")
@given(case=_q_case())
def test_q_loss_grad_matches_reference(impl: Any, clause_id: str, case: tuple[F, F, float]) -> None:
    q, qn = (round_to(impl.dtype, x) for x in case[:2])
    got, want = need(impl, clause_id)(q, qn, case[2]), ref.q_loss_grad(q, qn, case[2])
    assert_close(clause_id, got[0], want[0], dtype=impl.dtype, what="d/dq", M=qn.size)
    assert_close(clause_id, got[1], want[1], dtype=impl.dtype, what="d/dq_norm", M=qn.size)


@clause("diffusion_ql.q_loss_grad", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_Q))))
def test_q_loss_grad_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(lambda *a: need(impl, clause_id)(*a)[0], clause_id, *_BAD_Q[i])


# ---- diffusion_ql.loss ----------------------------------------------------------------


def _loss_scale(c: dict[str, Any], s: F, a: F, e: F, b: F, a_K: F, z: F, eta: float,
                nets: tuple[Any, ...]) -> tuple[F, F, F]:
    """(scale, u, expected bc part) of the diffusion_ql.loss rule for the test's networks."""
    net, L, q_fn, Lq, qn_fn, Lqn = nets  # L: a number or a function of the step k (vectorised)
    B = a.shape[0]
    steps = _steps(c["k"], B)
    abk = _ab(b)[steps][:, None]
    e_hat = net(np.sqrt(abk) * a + np.sqrt(1.0 - abk) * e, steps, s)
    l_d = np.sum((e - e_hat) ** 2, axis=1)
    u = _bc_u(a, e, e_hat, _f64(L(steps))[:, None] if callable(L) else L)
    a0, chain = _posterior_chain(net, s, b, a_K, z, c["m"], c["variance"], L)
    S = np.linalg.norm(chain, axis=1)
    q, qn = _f64(q_fn(s, a0)), _f64(qn_fn(s, a0))
    # The floor only keeps the scale finite (no 0/0) if a drawn critic's values all vanished, which the
    # implementation must reject anyway (mean|Q'| = 0 is outside the domain); it never binds otherwise.
    n = max(float(np.mean(np.abs(qn))), np.finfo(np.float64).tiny)
    l_q = -eta * q / n
    scale = np.abs(l_d) + 2 * u * np.sqrt(np.abs(l_d)) + (B + 4) * np.abs(l_q) \
        + eta / n * (Lq * S + np.abs(q) * Lqn * np.mean(S) / n)
    return scale, u, l_d


@st.composite
def _loss_case(draw: st.DrawFn) -> dict[str, Any]:
    c = draw(_case(max_K=8))
    B, da = c["a"].shape
    rng = np.random.default_rng(c["seed"] + 1)
    c.update(a_K=rng.standard_normal((B, da)), noises=rng.standard_normal((c["b"].size, B, da)),
             variance=draw(st.sampled_from(VARIANCES)),
             m=draw(st.one_of(st.none(), _bound(0.2, 1.5))),
             eta=_snap(draw(finite(0.0, 3.0))))
    return c


def _nets(c: dict[str, Any], da: int, ds: int) -> tuple[Any, ...]:
    net, L = _policy_net(c["seed"], da, ds)
    q_fn, Lq = _critic(c["seed"] + 2, ds, da)
    qn_fn, Lqn = _critic(c["seed"] + 3, ds, da)
    return net, L, q_fn, Lq, qn_fn, Lqn


@clause("diffusion_ql.loss", "composition")
@given(c=_loss_case())
def test_loss_composition(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, a, e, s, a_K, z = _rounded(impl, c, "b", "a", "eps", "s", "a_K", "noises")
    nets = _nets(c, a.shape[1], s.shape[1])
    net, _, q_fn, _, qn_fn, _ = nets
    got = need(impl, clause_id)(a, s, net, b, c["k"], e, a_K, z, q_fn, qn_fn, c["eta"], c["m"], c["variance"])
    # The pieces from the float64 reference: a bug in bc_loss, sample_action or q_loss fails their own
    # clauses, not this one.
    a0 = ref.sample_action(s, net, b, a_K, z, c["m"], c["variance"])
    want = ref.bc_loss(a, s, net, b, c["k"], e) + ref.q_loss(q_fn(s, a0), qn_fn(s, a0), c["eta"])
    scale, u, _ = _loss_scale(c, s, a, e, b, a_K, z, c["eta"], nets)
    assert_close(clause_id, got, want, dtype=impl.dtype, what="L = bc_loss + q_loss(Q(s, sample_action(s)))",
                 K=b.size, d=a.shape[1], scale=scale, u=u, inputs={"k": c["k"]})


@clause("diffusion_ql.loss", "constant_critic")
@given(c=_loss_case(), q_const=finite(0.01, 100.0))
def test_loss_constant_critic(impl: Any, clause_id: str, c: dict[str, Any], q_const: float) -> None:
    b, a, e, s, a_K, z = _rounded(impl, c, "b", "a", "eps", "s", "a_K", "noises")
    nets = _nets(c, a.shape[1], s.shape[1])
    net = nets[0]

    def const(s_: F, a_: F) -> F:
        return np.full(np.asarray(a_).shape[0], q_const)

    got = need(impl, clause_id)(a, s, net, b, c["k"], e, a_K, z, const, const, c["eta"], c["m"], c["variance"])
    l_d = ref.bc_loss(a, s, net, b, c["k"], e)  # the float64 reference, not the implementation's bc_loss
    _, u, _ = _loss_scale(c, s, a, e, b, a_K, z, c["eta"], nets)
    scale = np.abs(l_d) + 2 * u * np.sqrt(np.abs(l_d)) + (a.shape[0] + 4) * c["eta"]
    assert_close(clause_id, got, l_d - c["eta"], dtype=impl.dtype, what="L = L_d - eta for a constant critic",
                 K=b.size, d=a.shape[1], scale=scale, u=u, inputs={"eta": c["eta"]})


class _PointMass:
    """The exact noise predictor of actions concentrated at m(s) = s W + w0: a network linear in (a^k, s).

    eps(a^k, k, s) = (a^k - sqrt(ab_k) m(s)) / sqrt(1 - ab_k). Its reconstruction x0_hat is m(s) at every
    step, and the last step (k = 1: mu_tilde = x0_hat, c2 = 0 in Ho et al. Eq. 7, sigma_1 = 0) returns
    clip(x0_hat), so sample_action gives clip(m(s)) for any K, starting noise, noises and variance. On the
    dataset actions eps_hat - eps = sqrt(ab_k / (1 - ab_k)) (a - m(s)): L_d = ab_k / (1 - ab_k) ||a - m(s)||^2.
    """

    def __init__(self, b: F, W: F, w0: F) -> None:
        self.ab, self.W, self.w0 = _ab(b), W, w0

    def mean(self, s: F) -> F:
        out: F = _f64(s) @ self.W + self.w0
        return out

    def __call__(self, x: F, k: Any, s: F) -> F:
        abk = self.ab[np.asarray(k)][:, None]
        return _f64((_f64(x) - np.sqrt(abk) * self.mean(s)) / np.sqrt(1.0 - abk))

    def lip(self, k: Any) -> Any:
        """The Lipschitz constant in a^k at step k: 1 / sqrt(1 - ab_k)."""
        return 1.0 / np.sqrt(1.0 - self.ab[np.asarray(k)])

    def __repr__(self) -> str:
        return f"_PointMass(m(s) = s W + w0, W = {self.W.tolist()}, w0 = {self.w0.tolist()})"


class _Quadratic:
    """A quadratic critic Q(s, a) = c0 + sign ||a - s G||^2."""

    def __init__(self, c0: float, sign: float, G: F) -> None:
        self.c0, self.sign, self.G = c0, sign, G

    def __call__(self, s: F, a: F) -> F:
        return _f64(self.c0 + self.sign * np.sum((_f64(a) - _f64(s) @ self.G) ** 2, axis=1))

    def lip(self, s: F, a0: F) -> float:
        """Lipschitz bound in a near a0: |Q(a0 + d) - Q(a0)| <= (2 ||a0 - s G|| + |d|) |d|; the + 1 covers
        |d| <= 1, far above the rounding of a sampled action (the rule bounds it by (K + 4) eps S)."""
        return 2.0 * float(np.max(np.linalg.norm(a0 - _f64(s) @ self.G, axis=1))) + 1.0

    def __repr__(self) -> str:
        return f"_Quadratic({self.c0!r} + {self.sign!r} ||a - s G||^2, G = {self.G.tolist()})"


def _point_mass_agent(seed: int, b: F, s: F, da: int, max_action: float | None) -> tuple[Any, ...]:
    """A _PointMass policy, a critic maximised (Q = q0 - ||a - s G||^2, any sign) and a normaliser critic
    (Q' = q0' + ||a - s G'||^2 >= q0' > 0), with the Lipschitz bounds in _loss_scale's order."""
    rng = np.random.default_rng(seed)
    ds = s.shape[1]
    pm = _PointMass(b, rng.uniform(-0.5, 0.5, (ds, da)), rng.uniform(-1.5, 1.5, da))
    q_fn = _Quadratic(float(rng.uniform(-2.0, 2.0)), -1.0, rng.uniform(-0.5, 0.5, (ds, da)))
    qn_fn = _Quadratic(float(rng.uniform(0.5, 2.0)), 1.0, rng.uniform(-0.5, 0.5, (ds, da)))
    a0 = _point_mass_action(pm, s, max_action)
    return pm, pm.lip, q_fn, q_fn.lip(s, a0), qn_fn, qn_fn.lip(s, a0)


def _point_mass_action(pm: _PointMass, s: F, max_action: float | None) -> F:
    m = pm.mean(s)
    return m if max_action is None else np.clip(m, -max_action, max_action)


def _point_mass_loss(pm: _PointMass, q_fn: _Quadratic, qn_fn: _Quadratic, a: F, s: F, k: Any, eta: float,
                     max_action: float | None) -> F:
    """diffusion_ql.loss of a _PointMass policy in closed form: no chain, no network evaluation."""
    abk = pm.ab[_steps(k, a.shape[0])]
    a0 = _point_mass_action(pm, s, max_action)
    l_d = abk / (1.0 - abk) * np.sum((a - pm.mean(s)) ** 2, axis=1)
    return _f64(l_d - eta * q_fn(s, a0) / np.mean(np.abs(qn_fn(s, a0))))


@clause("diffusion_ql.loss", "point_mass_policy")
@given(c=_loss_case())
def test_loss_point_mass_policy(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, a, e, s, a_K, z = _rounded(impl, c, "b", "a", "eps", "s", "a_K", "noises")
    nets = _point_mass_agent(c["seed"] + 7, b, s, a.shape[1], c["m"])
    pm, _, q_fn, _, qn_fn, _ = nets
    got = need(impl, clause_id)(a, s, pm, b, c["k"], e, a_K, z, q_fn, qn_fn, c["eta"], c["m"], c["variance"])
    want = _point_mass_loss(pm, q_fn, qn_fn, a, s, c["k"], c["eta"], c["m"])
    scale, u, _ = _loss_scale(c, s, a, e, b, a_K, z, c["eta"], nets)
    assert_close(clause_id, got, want, dtype=impl.dtype,
                 what="point-mass policy: SNR_k ||a - m(s)||^2 - eta Q(s, clip m(s)) / mean|Q'(s, clip m(s))|",
                 K=b.size, d=a.shape[1], scale=scale, u=u,
                 inputs={"k": c["k"], "max_action": str(c["m"]), "m(s)": pm.mean(s)})


@clause("diffusion_ql.loss", "matches_reference")
@given(c=_loss_case())
def test_loss_matches_reference(impl: Any, clause_id: str, c: dict[str, Any]) -> None:
    b, a, e, s, a_K, z = _rounded(impl, c, "b", "a", "eps", "s", "a_K", "noises")
    nets = _nets(c, a.shape[1], s.shape[1])
    net, _, q_fn, _, qn_fn, _ = nets
    args = (a, s, net, b, c["k"], e, a_K, z, q_fn, qn_fn, c["eta"], c["m"], c["variance"])
    scale, u, _ = _loss_scale(c, s, a, e, b, a_K, z, c["eta"], nets)
    assert_close(clause_id, need(impl, clause_id)(*args), ref.loss(*args), dtype=impl.dtype, K=b.size,
                 d=a.shape[1], scale=scale, u=u, inputs={"k": c["k"]})


def _one_q(s: F, a: F) -> F:
    return np.ones(np.asarray(a).shape[0])


def _nan_q(s: F, a: F) -> F:
    return np.full(np.asarray(a).shape[0], np.nan)


def _wide_q(s: F, a: F) -> F:
    return np.ones((np.asarray(a).shape[0], 2))


_Z3B = np.zeros((3, 2, 2))
_LOSS_OK: tuple[Any, ...] = (_X, _S, _zero_fn, _B3, 2, _X, _X, _Z3B, _one_q, _one_q)
_BAD_LOSS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((_NAN,) + _LOSS_OK[1:], {}),
    (_LOSS_OK[:4] + (0,) + _LOSS_OK[5:], {}),                     # k = 0
    (_LOSS_OK[:6] + (np.ones((3, 2)),) + _LOSS_OK[7:], {}),       # a_K with another batch size
    (_LOSS_OK[:8] + (_nan_q, _one_q), {}),
    (_LOSS_OK[:8] + (_one_q, _wide_q), {}),
    (_LOSS_OK, {"eta": -1.0}),
    (_LOSS_OK, {"max_action": 0.0}),
    (_LOSS_OK[:2] + (_nan_fn,) + _LOSS_OK[3:], {}),
]


@clause("diffusion_ql.loss", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_LOSS))))
def test_loss_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_LOSS[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)
