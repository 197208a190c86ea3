"""Conformance: spec family ``dof`` (DoF, Li et al., ICLR 2025).

Agent networks are small MLPs built here from fixed seeds, with a Lipschitz bound in x read
off their weights (product of spectral norms, times 1.1 per Mish layer), which the tolerance
rules of the chains use. Gaussian agents with the exact noise predictors of
diffrl_ref.suite.gaussian_oracle give exact laws for the samplers. alpha_bar is recomputed
here in float64 from the (rounded) betas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffrl_ref.reference import ddpm as ddpm_ref
from diffrl_ref.reference import dof as ref
from diffrl_ref.reference import qmix as qref
from diffrl_ref.suite.check import assert_close, assert_raises_domain, assert_that, need, round_to
from diffrl_ref.suite.clause import clause
from diffrl_ref.suite.gaussian_oracle import GaussianData, propagate_affine
from diffrl_ref.suite.networks import MLP, time_embedding
from diffrl_ref.suite.stats import ALPHA, assert_gaussian_moments
from diffrl_ref.suite.strategies import betas, finite, seeds

F = np.ndarray
EMB, HID, MISH_LIP = 8, 16, 1.1
_N_SAMPLES = 20000
VARIANCES = ("beta", "beta_tilde")


def _f64(x: Any) -> F:
    return np.asarray(x, dtype=np.float64)


def _ab(b: F) -> F:
    return np.concatenate([[1.0], np.cumprod(1.0 - b)])


class _Agent:
    """An agent's noise network eps(x (B, d), k (B,)[, c (B, dc)]) -> (B, d) with a Lipschitz bound in x."""

    def __init__(self, seed: int, d: int, cond: int = 0, scale: float = 0.6) -> None:
        self.mlp = MLP.init(seed, [d + EMB + cond, HID, HID, d], "mish", scale)
        self.cond = cond
        w = [p[0] for p in self.mlp.params]
        self.lip = float(np.linalg.norm(w[0][:d], 2) * MISH_LIP * np.linalg.norm(w[1], 2) * MISH_LIP
                         * np.linalg.norm(w[2], 2))
        self.label = f"_Agent(seed={seed}, d={d}, cond={cond})"

    def __call__(self, x: F, k: Any, c: F | None = None) -> F:
        x = _f64(x)
        parts = [x, np.broadcast_to(time_embedding(k, EMB), (x.shape[0], EMB))]
        if self.cond:
            parts.append(_f64(c))
        return self.mlp(np.concatenate(parts, axis=1))

    def __repr__(self) -> str:
        return self.label


def _agents(seed: int, N: int, d: int, cond: int = 0) -> list[_Agent]:
    return [_Agent(seed + 17 * i, d, cond) for i in range(N)]


def _weights(mode: str, w: F | None, N: int) -> F:
    return np.ones(N) if mode == "concat" or w is None else w


def _f(parts: F, w: F) -> F:
    """Test-side factorisation: block i = w_i part_i, shape (B, N*d)."""
    B, N, d = parts.shape
    out: F = (w[None, :, None] * parts).reshape(B, N * d)
    return out


@st.composite
def _weight_draw(draw: st.DrawFn, N: int) -> tuple[str, F | None]:
    mode = draw(st.sampled_from(["concat", "wconcat"]))
    if mode == "concat":
        return mode, None
    mags = draw(hnp.arrays(np.float64, (N,), elements=finite(0.25, 3.0)))
    signs = draw(hnp.arrays(np.bool_, (N,), elements=st.booleans()))
    return mode, np.where(signs, -mags, mags)


# ---- dof.noise_factorisation ----------------------------------------------------------


@st.composite
def _parts_case(draw: st.DrawFn, max_N: int = 4) -> tuple[F, str, F | None]:
    B, N, d = draw(st.integers(1, 4)), draw(st.integers(1, max_N)), draw(st.integers(1, 3))
    x = draw(hnp.arrays(np.float64, (B, N, d), elements=finite(-10.0, 10.0)))
    mode, w = draw(_weight_draw(N))
    return x, mode, w


@clause("dof.noise_factorisation", "block_layout")
@given(case=_parts_case())
def test_noise_block_layout(impl: Any, clause_id: str, case: tuple[F, str, F | None]) -> None:
    e, mode, w = case
    e = round_to(impl.dtype, e)
    w = None if w is None else round_to(impl.dtype, w)
    B, N, d = e.shape
    out = _f64(need(impl, clause_id)(e, mode, w))
    assert_that(out.shape == (B, N * d), clause_id, f"eps_tot shape {out.shape}, expected {(B, N * d)}")
    ww = _weights(mode, w, N)
    for i in range(N):
        assert_close(clause_id, out[:, i * d:(i + 1) * d], ww[i] * e[:, i], dtype=impl.dtype,
                     what=f"block {i + 1} = w_{i + 1} eps_{i + 1} ({mode})", inputs={"w_i": ww[i]})


@clause("dof.noise_factorisation", "gaussian_law")
@given(N=st.integers(1, 3), d=st.integers(1, 2), wdraw=st.data())
def test_noise_gaussian_law(impl: Any, clause_id: str, N: int, d: int, wdraw: st.DataObject) -> None:
    mode, w = wdraw.draw(_weight_draw(N))
    w = None if w is None else round_to(impl.dtype, w)
    e = np.random.default_rng(5).standard_normal((_N_SAMPLES, N, d))
    out = _f64(need(impl, clause_id)(round_to(impl.dtype, e), mode, w))
    var = np.repeat(_weights(mode, w, N) ** 2, d)
    assert_gaussian_moments(clause_id, out, np.zeros(N * d), var, what=f"eps_tot ~ N(0, diag(w_i^2)) ({mode})")


@clause("dof.noise_factorisation", "matches_reference")
@given(case=_parts_case())
def test_noise_matches_reference(impl: Any, clause_id: str, case: tuple[F, str, F | None]) -> None:
    e, mode, w = case
    e = round_to(impl.dtype, e)
    w = None if w is None else round_to(impl.dtype, w)
    assert_close(clause_id, need(impl, clause_id)(e, mode, w), ref.noise_factorisation(e, mode, w),
                 dtype=impl.dtype, inputs={"mode": mode})


_E = np.ones((2, 3, 2))
_BAD_NOISE: list[tuple[Any, ...]] = [
    (_E, "atten", None),                              # not a noise factorisation
    (_E, "concat", np.ones(3)),                       # weights with Concat
    (_E, "wconcat", None),
    (_E, "wconcat", np.ones(2)),                      # wrong number of weights
    (_E, "wconcat", np.array([1.0, 0.0, 2.0])),       # w_i = 0: not invertible
    (_E, "wconcat", np.array([1.0, np.nan, 2.0])),
    (np.full((2, 3, 2), np.nan), "concat", None),
    (np.ones((2, 6)), "concat", None),                # rank 2
]


@clause("dof.noise_factorisation", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_NOISE))))
def test_noise_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    assert_raises_domain(need(impl, clause_id), clause_id, *_BAD_NOISE[i])


# ---- dof.data_factorisation -----------------------------------------------------------


class _Net:
    """A hypernetwork with a short repr."""

    def __init__(self, seed: int, sizes: list[int], activation: str) -> None:
        self.mlp = MLP.init(seed, sizes, activation)
        self.label = f"MLP(seed={seed}, sizes={sizes}, {activation})"

    def __call__(self, s: F) -> F:
        return self.mlp(s)

    def __repr__(self) -> str:
        return self.label


def _hyper(seed: int, N: int, H: int, ds: int) -> qref.Hypernetworks:
    return qref.Hypernetworks(_Net(seed, [ds, N * H], "linear"), _Net(seed + 1, [ds, H], "linear"),
                              _Net(seed + 2, [ds, H], "linear"), _Net(seed + 3, [ds, H, 1], "relu"))


def _mix_scale(q: F, s: F, hyper: qref.Hypernetworks) -> F:
    """The qmix.mixer rule's scale per row: sum_h |w2|_h (sum_i |W1|_ih |q_i| + |b1_h| + 1) + |V|."""
    b1 = _f64(hyper.b1(s))
    B, H = b1.shape
    w1 = np.abs(_f64(hyper.w1(s))).reshape(B, q.shape[1], H)
    inner = np.einsum("bn,bnh->bh", np.abs(q), w1) + np.abs(b1) + 1.0
    out: F = np.sum(np.abs(_f64(hyper.w2(s))) * inner, axis=1) + np.abs(_f64(hyper.b2(s))[:, 0])
    return out


def _softmax(a: F) -> F:
    z = np.exp(a - np.max(a, axis=-1, keepdims=True))
    out: F = z / np.sum(z, axis=-1, keepdims=True)
    return out


@clause("dof.data_factorisation", "linear_blocks")
@given(case=_parts_case())
def test_data_linear_blocks(impl: Any, clause_id: str, case: tuple[F, str, F | None]) -> None:
    x, mode, w = case
    x = round_to(impl.dtype, x)
    w = None if w is None else round_to(impl.dtype, w)
    B, N, d = x.shape
    out = _f64(need(impl, clause_id)(x, mode, w))
    assert_that(out.shape == (B, N * d), clause_id, f"x_tot shape {out.shape}, expected {(B, N * d)}")
    ww = _weights(mode, w, N)
    for i in range(N):
        assert_close(clause_id, out[:, i * d:(i + 1) * d], ww[i] * x[:, i], dtype=impl.dtype,
                     what=f"block {i + 1} = w_{i + 1} x_{i + 1} ({mode})", N=N, H=0,
                     scale=np.abs(ww[i] * x[:, i]))
    noise = ref.noise_factorisation(x, mode, w)  # the float64 reference, not the implementation's clause
    assert_close(clause_id, out, noise, dtype=impl.dtype, what="same f as dof.noise_factorisation", N=N, H=0,
                 scale=np.abs(noise))


@clause("dof.data_factorisation", "atten_rows_stochastic")
@given(N=st.integers(1, 4), B=st.integers(1, 3), per_row=st.booleans(), seed=seeds())
def test_data_atten_rows_stochastic(impl: Any, clause_id: str, N: int, B: int, per_row: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = round_to(impl.dtype, rng.uniform(-5.0, 5.0, (B, N, N) if per_row else (N, N)))
    fn = need(impl, clause_id)
    probe = np.broadcast_to(np.eye(N), (B, N, N)).copy()   # x_j = e_j, d = N
    W = _f64(fn(probe, "atten", scores)).reshape(B, N, N)  # block i = sum_j w_ij e_j = row i of W
    expected = _softmax(np.broadcast_to(scores, (B, N, N)))
    assert_that(bool(np.all(W >= 0)), clause_id, f"negative attention weight: min {W.min():.3g}")
    # The Atten scale sum_j w_ij |x_j| is w_ic <= 1 per entry for one-hot probes, so 1 per entry and N for
    # a row sum of N entries.
    assert_close(clause_id, W.sum(axis=2), np.ones((B, N)), dtype=impl.dtype, what="rows sum to 1", N=N, H=0,
                 scale=float(N))
    assert_close(clause_id, W, expected, dtype=impl.dtype, what="w_ij = softmax_j(a_ij)", N=N, H=0, scale=1.0,
                 inputs={"scores": scores})
    c = round_to(impl.dtype, rng.uniform(-3.0, 3.0, (B, 1, 2)))
    same = np.broadcast_to(c, (B, N, 2)).copy()
    out = _f64(fn(same, "atten", scores)).reshape(B, N, 2)
    assert_close(clause_id, out, np.broadcast_to(c, (B, N, 2)), dtype=impl.dtype,
                 what="equal agents give their common vector", N=N, H=0, scale=np.abs(same))


@st.composite
def _mix_case(draw: st.DrawFn) -> tuple[F, F, qref.Hypernetworks, int]:
    B, N, d, H = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
    x = draw(hnp.arrays(np.float64, (B, N, d), elements=finite(-5.0, 5.0)))
    s = draw(hnp.arrays(np.float64, (B, 2), elements=finite(-2.0, 2.0)))
    return x, s, _hyper(draw(seeds()), N, H, 2), H


@clause("dof.data_factorisation", "qmix_coordinatewise_monotone")
@given(case=_mix_case(), seed=seeds())
def test_data_qmix_coordinatewise(impl: Any, clause_id: str, case: tuple[F, F, qref.Hypernetworks, int],
                                  seed: int) -> None:
    x, s, hyper, H = case
    x, s = round_to(impl.dtype, x), round_to(impl.dtype, s)
    B, N, d = x.shape
    fn = need(impl, clause_id)
    mix = qref.mixer  # the float64 reference: a bug in qmix.mixer fails that clause, not this one
    out = _f64(fn(x, "qmix", None, s, hyper))
    assert_that(out.shape == (B, d), clause_id, f"QMIX x_tot shape {out.shape}, expected {(B, d)}")
    rng = np.random.default_rng(seed)
    for c in range(d):
        scale = _mix_scale(x[:, :, c], s, hyper)
        assert_close(clause_id, out[:, c], mix(x[:, :, c], s, hyper), dtype=impl.dtype,
                     what=f"coordinate {c} = qmix.mixer(x_1[c]..x_N[c])", N=N, H=H, scale=scale)
        other = x.copy()
        others = np.arange(d) != c
        other[:, :, others] = round_to(impl.dtype, rng.uniform(-5.0, 5.0, other[:, :, others].shape))
        assert_close(clause_id, _f64(fn(other, "qmix", None, s, hyper))[:, c], out[:, c], dtype=impl.dtype,
                     what=f"coordinate {c} unchanged when the other coordinates change", N=N, H=H, scale=scale)
        for i in range(N):
            up = x.copy()
            up[:, i, c] += 1.0
            up = round_to(impl.dtype, up)
            drop = np.maximum(out[:, c] - _f64(fn(up, "qmix", None, s, hyper))[:, c], 0.0)
            assert_close(clause_id, drop, np.zeros(B), dtype=impl.dtype,
                         what=f"coordinate {c} does not decrease when x_{i + 1}[{c}] grows", N=N, H=H,
                         scale=np.maximum(scale, _mix_scale(up[:, :, c], s, hyper)))


@clause("dof.data_factorisation", "matches_reference")
@given(case=_mix_case())
def test_data_matches_reference_qmix(impl: Any, clause_id: str, case: tuple[F, F, qref.Hypernetworks, int]) -> None:
    x, s, hyper, H = case
    x, s = round_to(impl.dtype, x), round_to(impl.dtype, s)
    N, d = x.shape[1], x.shape[2]
    scale = np.stack([_mix_scale(x[:, :, c], s, hyper) for c in range(d)], axis=1)
    assert_close(clause_id, need(impl, clause_id)(x, "qmix", None, s, hyper),
                 ref.data_factorisation(x, "qmix", None, s, hyper), dtype=impl.dtype, what="qmix", N=N, H=H,
                 scale=scale)


@clause("dof.data_factorisation", "matches_reference")
@given(case=_mix_case(), mode=st.sampled_from(["concat", "wconcat", "atten"]), seed=seeds())
def test_data_matches_reference(impl: Any, clause_id: str, case: tuple[F, F, qref.Hypernetworks, int], mode: str,
                                seed: int) -> None:
    x, s, hyper, H = case
    x, s = round_to(impl.dtype, x), round_to(impl.dtype, s)
    B, N, d = x.shape
    rng = np.random.default_rng(seed)
    if mode == "wconcat":
        w: F | None = round_to(impl.dtype, rng.uniform(0.25, 3.0, N) * rng.choice([-1.0, 1.0], N))
    elif mode == "atten":
        w = round_to(impl.dtype, rng.uniform(-5.0, 5.0, (B, N, N)))
    else:
        w = None
    exp = ref.data_factorisation(x, mode, w)
    scale = np.abs(exp) if mode != "atten" else np.repeat(
        np.broadcast_to(np.max(np.abs(x), axis=(1, 2))[:, None], (B, N)), d, axis=1)
    assert_close(clause_id, need(impl, clause_id)(x, mode, w), exp, dtype=impl.dtype, what=mode, N=N, H=0,
                 scale=scale)


_X = np.ones((2, 3, 2))
_HY = _hyper(3, 3, 4, 2)
_S = np.zeros((2, 2))
_BAD_DATA: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((_X, "sum"), {}),                                              # unknown mode
    ((_X, "wconcat"), {}),                                          # no weights
    ((_X, "wconcat", np.array([1.0, 0.0, 1.0])), {}),               # zero weight
    ((_X, "atten"), {}),                                            # no scores
    ((_X, "atten", np.zeros((3, 2))), {}),                          # scores of the wrong shape
    ((_X, "atten", np.full((3, 3), np.nan)), {}),
    ((_X, "qmix"), {}),                                             # no s, no hyper
    ((_X, "qmix"), {"s": _S}),                                      # no hyper
    ((_X, "concat"), {"s": _S, "hyper": _HY}),                      # hypernetworks for Concat
    ((_X, "qmix"), {"s": np.zeros((3, 2)), "hyper": _HY}),          # s with 3 rows for B = 2
    ((np.full((2, 3, 2), np.nan), "concat"), {}),
]


@clause("dof.data_factorisation", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_DATA))))
def test_data_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_DATA[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- dof.train_step -------------------------------------------------------------------


@st.composite
def _train_case(draw: st.DrawFn, max_N: int = 3) -> dict[str, Any]:
    b = draw(betas(max_K=20))
    K = b.size
    B, N, d = draw(st.integers(1, 4)), draw(st.integers(1, max_N)), draw(st.integers(1, 3))
    mode, w = draw(_weight_draw(N))
    x0 = draw(hnp.arrays(np.float64, (B, N * d), elements=finite(-5.0, 5.0)))
    eps = draw(hnp.arrays(np.float64, (B, N, d), elements=finite(-4.0, 4.0)))
    if draw(st.booleans()):
        k: Any = np.asarray(draw(st.lists(st.integers(1, K), min_size=B, max_size=B)), dtype=np.int64)
    else:
        k = draw(st.integers(1, K))
    return {"b": b, "k": k, "x0": x0, "eps": eps, "mode": mode, "w": w, "seed": draw(seeds())}


def _rounded(impl: Any, c: dict[str, Any]) -> dict[str, Any]:
    out = dict(c)
    for key in ("b", "x0", "eps"):
        out[key] = round_to(impl.dtype, c[key])
    out["w"] = None if c["w"] is None else round_to(impl.dtype, c["w"])
    return out


def _per_agent(c: dict[str, Any], nets: Sequence[Callable[..., Any]], cond: F | None = None) -> tuple[F, F, F]:
    """Test-side Algorithm 1 per agent: x_i^k, eps_theta_i(x_i^k, k[, c]) and sum_i w_i^2 ||eps_i - eps_hat_i||^2."""
    eps = c["eps"]
    B, N, d = eps.shape
    w = _weights(c["mode"], c["w"], N)
    ab = np.broadcast_to(_ab(c["b"])[np.asarray(c["k"])], (B,))[:, None, None]
    x0 = c["x0"].reshape(B, N, d) / w[None, :, None]
    xk = np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * eps
    steps = np.broadcast_to(np.asarray(c["k"]), (B,)).astype(np.int64)
    extra = () if cond is None else (cond,)
    eh = np.stack([_f64(nets[i](xk[:, i], steps.copy(), *extra)) for i in range(N)], axis=1)
    loss = np.sum(w[None, :, None] ** 2 * (eps - eh) ** 2, axis=(1, 2))
    return xk, eh, loss


def _g(c: dict[str, Any], eh: F, lip: float) -> F:
    """The rule's g per row: sqrt(n) max|w| (1 + L) (1 + max|x0|/min|w| + max|eps| + max|eps_hat|) / sqrt(1 - ab)."""
    eps = c["eps"]
    B, N, d = eps.shape
    w = np.abs(_weights(c["mode"], c["w"], N))
    ab = np.broadcast_to(_ab(c["b"])[np.asarray(c["k"])], (B,))
    mag = 1.0 + np.max(np.abs(c["x0"]), axis=1) / w.min() + np.max(np.abs(eps), axis=(1, 2)) \
        + np.max(np.abs(eh), axis=(1, 2))
    out: F = np.sqrt(N * d) * w.max() * (1.0 + lip) * mag / np.sqrt(1.0 - ab)
    return out


class _Oracle:
    """Returns agent i's true noise: (x - sqrt(ab_k) x_i^0) / sqrt(1 - ab_k), plus an optional offset."""

    def __init__(self, x0_i: F, b: F, delta: F | None = None) -> None:
        self.x0_i, self.ab, self.delta = x0_i, _ab(b), delta

    def __call__(self, x: F, k: Any) -> F:
        ab = np.broadcast_to(self.ab[np.asarray(k)], (x.shape[0],))[:, None]
        out = (_f64(x) - np.sqrt(ab) * self.x0_i) / np.sqrt(1.0 - ab)
        shifted: F = out if self.delta is None else out + self.delta
        return shifted

    def __repr__(self) -> str:
        return "_Oracle"


def _tol_vars(c: dict[str, Any], g: F) -> dict[str, Any]:
    B, N, d = c["eps"].shape
    return {"K": c["b"].size, "n": N * d, "g": g}


@clause("dof.train_step", "zero_iff_true_noise")
@given(case=_train_case(), delta_seed=seeds())
def test_train_zero_iff_true_noise(impl: Any, clause_id: str, case: dict[str, Any], delta_seed: int) -> None:
    c = _rounded(impl, case)
    B, N, d = c["eps"].shape
    w = _weights(c["mode"], c["w"], N)
    x0 = c["x0"].reshape(B, N, d) / w[None, :, None]
    lip = float(np.max(1.0 / np.sqrt(1.0 - _ab(c["b"])[1:])))
    loss_fn = need(impl, clause_id)
    j = int(np.random.default_rng(delta_seed).integers(N))
    delta = np.random.default_rng(delta_seed).uniform(-1.0, 1.0, (B, d))
    for off in (None, delta):
        nets = [_Oracle(x0[:, i], c["b"], off if i == j else None) for i in range(N)]
        got = _f64(loss_fn(c["x0"], c["k"], c["eps"], nets, c["b"], c["mode"], c["w"]))
        expected = np.zeros(B) if off is None else w[j] ** 2 * np.sum(off**2, axis=1)
        _, eh, _ = _per_agent(c, nets)
        what = "L = 0 for networks returning the true noise" if off is None else \
            f"L = w_{j + 1}^2 ||delta||^2 when agent {j + 1} is off by delta"
        assert_close(clause_id, got, expected, dtype=impl.dtype, what=what, **_tol_vars(c, _g(c, eh, lip)),
                     inputs={"k": c["k"], "mode": c["mode"]})


@clause("dof.train_step", "sum_of_agent_losses")
@given(case=_train_case())
def test_train_sum_of_agent_losses(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    c = _rounded(impl, case)
    B, N, d = c["eps"].shape
    nets = _agents(c["seed"], N, d)
    _, eh, expected = _per_agent(c, nets)
    got = need(impl, clause_id)(c["x0"], c["k"], c["eps"], nets, c["b"], c["mode"], c["w"])
    assert_close(clause_id, got, expected, dtype=impl.dtype, what="sum_i w_i^2 ||eps_i - eps_theta_i(x_i^k, k)||^2",
                 **_tol_vars(c, _g(c, eh, max(a.lip for a in nets))), inputs={"k": c["k"], "mode": c["mode"]})


@clause("dof.train_step", "matches_reference")
@given(case=_train_case())
def test_train_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    c = _rounded(impl, case)
    B, N, d = c["eps"].shape
    nets = _agents(c["seed"], N, d)
    args = (c["x0"], c["k"], c["eps"], nets, c["b"], c["mode"], c["w"])
    _, eh, _ = _per_agent(c, nets)
    assert_close(clause_id, need(impl, clause_id)(*args), ref.train_step(*args), dtype=impl.dtype,
                 **_tol_vars(c, _g(c, eh, max(a.lip for a in nets))), inputs={"k": c["k"]})


_B3 = np.array([0.1, 0.2, 0.3])
_X0 = np.ones((2, 4))
_EPS = np.ones((2, 2, 2))
_NETS = _agents(1, 2, 2)


def _bad_train_cases() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    wrong_shape = [_NETS[0], lambda x, k: np.ones((2, 3))]
    return [
        ((_X0, 0, _EPS, _NETS, _B3), {}),                                 # k = 0
        ((_X0, 4, _EPS, _NETS, _B3), {}),                                 # k = K + 1
        ((np.ones((2, 5)), 1, _EPS, _NETS, _B3), {}),                     # x0_tot of the wrong width
        ((_X0, 1, np.full((2, 2, 2), np.nan), _NETS, _B3), {}),
        ((_X0, 1, _EPS, _NETS[:1], _B3), {}),                             # one network for two agents
        ((_X0, 1, _EPS, wrong_shape, _B3), {}),                           # network returns (B, 3)
        ((_X0, 1, _EPS, _NETS, _B3, "wconcat", np.array([1.0, 0.0])), {}),
        ((_X0, 1, _EPS, _NETS, _B3, "atten"), {}),                        # not a noise factorisation
        ((_X0, 1, _EPS, _NETS, np.array([0.1, 1.0])), {}),                # beta = 1
    ]


_BAD_TRAIN = _bad_train_cases()


@clause("dof.train_step", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_TRAIN))))
def test_train_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_TRAIN[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- dof.decentralised_sample and dof.igd ---------------------------------------------


@st.composite
def _chain_case(draw: st.DrawFn, min_N: int = 1) -> dict[str, Any]:
    b = draw(betas(max_K=6, lo=0.01))
    N, d, B = draw(st.integers(min_N, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    mode, w = draw(_weight_draw(N))
    rng = np.random.default_rng(draw(seeds()))
    return {"b": b, "mode": mode, "w": w, "variance": draw(st.sampled_from(VARIANCES)),
            "xK": rng.standard_normal((B, N, d)), "z": rng.standard_normal((b.size, B, N, d)),
            "seed": int(rng.integers(2**31))}


def _chain_rounded(impl: Any, c: dict[str, Any]) -> dict[str, Any]:
    out = dict(c)
    for key in ("b", "xK", "z"):
        out[key] = round_to(impl.dtype, c[key])
    out["w"] = None if c["w"] is None else round_to(impl.dtype, c["w"])
    return out


def _centralised(c: dict[str, Any], nets: list[Any]) -> tuple[F, F, F]:
    """Test-side centralised chain on x_tot with the float64 reference ddpm.reverse_step (not the
    implementation's: a bug there fails ddpm.reverse_step, not the dof clauses).

    Returns the sample, the scale max(|x| + |eps_hat| + |z|) and the gain of the rule.
    """
    step = ddpm_ref.reverse_step
    b, xK, z = c["b"], c["xK"], c["z"]
    B, N, d = xK.shape
    w = _weights(c["mode"], c["w"], N)
    ab = _ab(b)
    x = _f(xK, w)
    scale = 0.0
    for k in range(b.size, 0, -1):
        steps = np.full(B, k, dtype=np.int64)
        parts = x.reshape(B, N, d) / w[None, :, None]
        eh = _f(np.stack([_f64(nets[i](parts[:, i], steps.copy())) for i in range(N)], axis=1), w)
        zt = _f(z[k - 1], w)
        scale = max(scale, float(np.max(np.abs(x)) + np.max(np.abs(eh)) + np.max(np.abs(zt))))
        x = _f64(step(x, eh, b, k, zt, c["variance"]))
    lip = max(a.lip for a in nets) * float(np.max(np.abs(w)) / np.min(np.abs(w)))
    coef = b / np.sqrt(1.0 - ab[1:])
    gain = float(np.prod(np.maximum(1.0, (1.0 + coef * lip) / np.sqrt(1.0 - b))) / np.min(1.0 - ab[1:]))
    return x, np.asarray(scale), np.asarray(gain)


@clause("dof.decentralised_sample", "reproduces_centralised_step")
@given(case=_chain_case())
def test_decentralised_reproduces_centralised(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    c = _chain_rounded(impl, case)
    B, N, d = c["xK"].shape
    nets = _agents(c["seed"], N, d)
    got = _f64(need(impl, clause_id)(c["xK"], nets, c["b"], c["z"], c["variance"]))
    assert_that(got.shape == (B, N, d), clause_id, f"output shape {got.shape}, expected {(B, N, d)}")
    expected, scale, gain = _centralised(c, nets)
    assert_close(clause_id, _f(got, _weights(c["mode"], c["w"], N)), expected, dtype=impl.dtype,
                 what=f"f(decentralised samples) = centralised chain ({c['mode']}, {c['variance']})",
                 K=c["b"].size, scale=scale, gain=gain)


@clause("dof.decentralised_sample", "independent_agents")
@given(case=_chain_case(min_N=2))
def test_decentralised_independent_agents(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    c = _chain_rounded(impl, case)
    B, N, d = c["xK"].shape
    nets = _agents(c["seed"], N, d)
    sample = need(impl, clause_id)
    base = _f64(sample(c["xK"], nets, c["b"], c["z"], c["variance"]))
    _, scale, gain = _centralised(c, nets)
    rng = np.random.default_rng(c["seed"])
    for j in range(N):
        xK, z, other = c["xK"].copy(), c["z"].copy(), list(nets)
        xK[:, j] = round_to(impl.dtype, rng.standard_normal((B, d)))
        z[:, :, j] = round_to(impl.dtype, rng.standard_normal(z[:, :, j].shape))
        other[j] = _Agent(c["seed"] + 1000 + j, d)
        got = _f64(sample(xK, other, c["b"], z, c["variance"]))
        keep = np.arange(N) != j
        assert_close(clause_id, got[:, keep], base[:, keep], dtype=impl.dtype,
                     what=f"other agents unchanged when agent {j + 1}'s start, noise and network change",
                     K=c["b"].size, scale=scale, gain=gain)


def _gauss_agents(draw: st.DrawFn, N: int, d: int) -> list[GaussianData]:
    out = []
    for _ in range(N):
        m = draw(st.lists(finite(-3.0, 3.0), min_size=d, max_size=d))
        v = draw(st.lists(finite(0.01, 4.0), min_size=d, max_size=d))
        out.append(GaussianData.of(m, v))
    return out


class _EpsStar:
    """The exact noise predictor of Gaussian data: eps*(x, alpha_bar_k)."""

    def __init__(self, data: GaussianData, b: F) -> None:
        self.data, self.ab = data, _ab(b)

    def __call__(self, x: F, k: Any) -> F:
        return self.data.eps(_f64(x), self.ab[np.broadcast_to(np.asarray(k), (np.shape(x)[0],))])

    def __repr__(self) -> str:
        return f"_EpsStar(mean={self.data.mean}, var={self.data.var})"


def _chain_law(data: GaussianData, b: F, variance: str) -> tuple[F, F]:
    """Exact law of one agent's DDPM chain from N(0, I) driven by eps* (float64 closed form)."""
    ab = _ab(b)
    mean, var = np.zeros_like(data.mean), np.ones_like(data.var)
    for k in range(b.size, 0, -1):
        beta, alpha = b[k - 1], 1.0 - b[k - 1]
        _, V = data.marginal(ab[k])
        A = (1.0 - beta / V) / np.sqrt(alpha)
        shift = beta * np.sqrt(ab[k]) * data.mean / (np.sqrt(alpha) * V)
        s2 = 0.0 if k == 1 else (beta if variance == "beta" else (1.0 - ab[k - 1]) / (1.0 - ab[k]) * beta)
        mean, var = propagate_affine(mean, var, A, shift, s2)
    return mean, var


@st.composite
def _law_case(draw: st.DrawFn) -> dict[str, Any]:
    b = draw(betas(max_K=10))
    N, d = draw(st.integers(2, 3)), draw(st.integers(1, 2))
    mode, w = draw(_weight_draw(N))
    return {"b": b, "data": _gauss_agents(draw, N, d), "mode": mode, "w": w,
            "variance": draw(st.sampled_from(VARIANCES))}


@clause("dof.decentralised_sample", "exact_law")
@given(case=_law_case())
def test_decentralised_exact_law(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    b = round_to(impl.dtype, case["b"])
    data = case["data"]
    N, d = len(data), data[0].mean.size
    rng = np.random.default_rng(11)
    xK = round_to(impl.dtype, rng.standard_normal((_N_SAMPLES, N, d)))
    z = round_to(impl.dtype, rng.standard_normal((b.size, _N_SAMPLES, N, d)))
    out = _f64(need(impl, clause_id)(xK, [_EpsStar(g, b) for g in data], b, z, case["variance"]))
    laws = [_chain_law(g, b, case["variance"]) for g in data]
    alpha = ALPHA / (N + 1)
    for i, (m, v) in enumerate(laws):
        assert_gaussian_moments(clause_id, out[:, i], m, v, alpha=alpha,
                         what=f"agent {i + 1}'s sample, K={b.size}, variance={case['variance']}")
    assert_gaussian_moments(clause_id, out.sum(axis=1), sum(m for m, _ in laws), sum(v for _, v in laws), alpha=alpha,
                     what="sum over agents: independent agents (product law)")


@clause("dof.decentralised_sample", "matches_reference")
@given(case=_chain_case())
def test_decentralised_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    c = _chain_rounded(impl, case)
    B, N, d = c["xK"].shape
    nets = _agents(c["seed"], N, d)
    c_concat = dict(c, mode="concat", w=None)
    _, scale, gain = _centralised(c_concat, nets)
    args = (c["xK"], nets, c["b"], c["z"], c["variance"])
    assert_close(clause_id, need(impl, clause_id)(*args), ref.decentralised_sample(*args), dtype=impl.dtype,
                 K=c["b"].size, scale=scale, gain=gain, inputs={"variance": c["variance"]})


_XK = np.ones((2, 2, 2))
_Z = np.ones((3, 2, 2, 2))


def _bad_dec_cases() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    nan_z = _Z.copy()
    nan_z[1, 0, 0, 0] = np.nan
    return [
        ((_XK, _NETS, _B3, np.ones((2, 2, 2, 2))), {}),                 # z with K - 1 steps
        ((_XK, _NETS, _B3, np.ones((3, 2, 2))), {}),                    # z without the agent axis
        ((np.full((2, 2, 2), np.nan), _NETS, _B3, _Z), {}),
        ((_XK, _NETS, _B3, nan_z), {}),
        ((_XK, _NETS[:1], _B3, _Z), {}),                                # one network for two agents
        ((_XK, [_NETS[0], lambda x, k: np.ones((2, 3))], _B3, _Z), {}),
        ((_XK, _NETS, _B3, _Z), {"variance": "fixedlarge"}),
        ((_XK, _NETS, np.array([0.1, 0.0, 0.2]), _Z), {}),              # beta = 0
    ]


_BAD_DEC = _bad_dec_cases()


@clause("dof.decentralised_sample", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_DEC))))
def test_decentralised_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_DEC[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


@clause("dof.igd", "equals_decentralised")
@given(case=_chain_case())
def test_igd_equals_decentralised(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    c = _chain_rounded(impl, case)
    B, N, d = c["xK"].shape
    nets = _agents(c["seed"], N, d)
    w = _weights(c["mode"], c["w"], N)
    z_tot = np.stack([_f(zk, w) for zk in c["z"]])
    got = _f64(need(impl, clause_id)(_f(c["xK"], w), nets, c["b"], z_tot, c["mode"], c["w"], c["variance"]))
    dec = ref.decentralised_sample(c["xK"], nets, c["b"], c["z"], c["variance"])  # the float64 reference
    _, scale, gain = _centralised(c, nets)
    assert_close(clause_id, got, _f(dec, w), dtype=impl.dtype,
                 what=f"centralised sample = f(decentralised samples) ({c['mode']}, {c['variance']})",
                 K=c["b"].size, scale=scale, gain=gain)


@clause("dof.igd", "product_law")
@given(case=_law_case())
def test_igd_product_law(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    b = round_to(impl.dtype, case["b"])
    data = case["data"]
    N, d = len(data), data[0].mean.size
    w = _weights(case["mode"], None if case["w"] is None else round_to(impl.dtype, case["w"]), N)
    rng = np.random.default_rng(13)
    x_tot = round_to(impl.dtype, _f(rng.standard_normal((_N_SAMPLES, N, d)), w))
    z_tot = round_to(impl.dtype, np.stack([_f(rng.standard_normal((_N_SAMPLES, N, d)), w) for _ in range(b.size)]))
    wt = None if case["mode"] == "concat" else w
    out = _f64(need(impl, clause_id)(x_tot, [_EpsStar(g, b) for g in data], b, z_tot, case["mode"], wt,
                                     case["variance"])).reshape(_N_SAMPLES, N, d)
    laws = [_chain_law(g, b, case["variance"]) for g in data]
    alpha = ALPHA / (N + 1)
    for i, (m, v) in enumerate(laws):
        assert_gaussian_moments(clause_id, out[:, i], w[i] * m, w[i] ** 2 * v, alpha=alpha,
                         what=f"block {i + 1} ~ N(w_i m_i, w_i^2 v_i) ({case['mode']}, K={b.size})")
    assert_gaussian_moments(clause_id, out.sum(axis=1), sum(w[i] * laws[i][0] for i in range(N)),
                     sum(w[i] ** 2 * laws[i][1] for i in range(N)), alpha=alpha,
                     what="sum of the blocks: the blocks are independent (product law)")


@clause("dof.igd", "matches_reference")
@given(case=_chain_case())
def test_igd_matches_reference(impl: Any, clause_id: str, case: dict[str, Any]) -> None:
    c = _chain_rounded(impl, case)
    B, N, d = c["xK"].shape
    nets = _agents(c["seed"], N, d)
    w = _weights(c["mode"], c["w"], N)
    x_tot = round_to(impl.dtype, _f(c["xK"], w))
    z_tot = round_to(impl.dtype, np.stack([_f(zk, w) for zk in c["z"]]))
    _, scale, gain = _centralised(c, nets)
    args = (x_tot, nets, c["b"], z_tot, c["mode"], c["w"], c["variance"])
    assert_close(clause_id, need(impl, clause_id)(*args), ref.igd(*args), dtype=impl.dtype, K=c["b"].size,
                 scale=scale, gain=gain, inputs={"mode": c["mode"]})


_XT = np.ones((2, 4))
_ZT = np.ones((3, 2, 4))
_BAD_IGD: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((np.ones((2, 5)), _NETS, _B3, np.ones((3, 2, 5))), {}),            # 5 columns for 2 agents
    ((_XT, _NETS, _B3, np.ones((2, 2, 4))), {}),                        # z_tot with K - 1 steps
    ((np.full((2, 4), np.nan), _NETS, _B3, _ZT), {}),
    ((_XT, _NETS, _B3, _ZT, "wconcat", np.array([2.0, 0.0])), {}),
    ((_XT, _NETS, _B3, _ZT, "qmix"), {}),
    ((_XT, [_NETS[0], lambda x, k: np.ones((2, 1))], _B3, _ZT), {}),
]


@clause("dof.igd", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_IGD))))
def test_igd_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_IGD[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- dof.policy_loss ------------------------------------------------------------------


def _policy_vars(c: dict[str, Any], eh: F, lip: float, bc: F, q: F, eta: float,
                 norm: F | None = None) -> dict[str, Any]:
    scale = np.mean(np.abs(q), axis=0) if norm is None else norm
    qmag = np.sum(eta * np.abs(q) / scale, axis=1)
    return {**_tol_vars(c, _g(c, eh, lip)), "B": q.shape[0], "bc": np.abs(bc), "qmag": qmag}


@st.composite
def _q_draw(draw: st.DrawFn, B: int, N: int) -> F:
    q = draw(hnp.arrays(np.float64, (B, N), elements=finite(-20.0, 20.0)))
    # Every agent column needs E|Q| > 0 (the domain); columns summing below 1e-3 are moved off that
    # boundary by + 1 (the rule is relative to the Q term's magnitude, so nothing depends on the value).
    return np.where(np.abs(q).sum(axis=0) > 1e-3, q, q + 1.0)


@clause("dof.policy_loss", "composition")
@given(case=_train_case(), eta=finite(0.0, 5.0), data=st.data())
def test_policy_composition(impl: Any, clause_id: str, case: dict[str, Any], eta: float, data: st.DataObject) -> None:
    c = _rounded(impl, case)
    B, N, d = c["eps"].shape
    q = round_to(impl.dtype, data.draw(_q_draw(B, N)))
    q_norm = round_to(impl.dtype, data.draw(_q_draw(data.draw(st.integers(1, 4)), N)))  # another critic's values
    norm = np.mean(np.abs(q_norm), axis=0)
    nets = _agents(c["seed"], N, d)
    base = (c["x0"], c["k"], c["eps"], nets, c["b"])
    loss = need(impl, clause_id)
    got = loss(*base, q, eta, c["mode"], c["w"])  # first: a domain error names this clause
    bc = ref.train_step(*base, c["mode"], c["w"])  # the float64 reference, not the implementation's train_step
    _, eh, _ = _per_agent(c, nets)
    lip = max(a.lip for a in nets)
    expected = bc - np.sum(eta * q / np.mean(np.abs(q), axis=0), axis=1)
    assert_close(clause_id, got, expected, dtype=impl.dtype,
                 what="L_BC - sum_i eta Q_i / mean|Q_i|", **_policy_vars(c, eh, lip, bc, q, eta))
    expected = bc - np.sum(eta * q / norm, axis=1)
    assert_close(clause_id, loss(*base, q, eta, c["mode"], c["w"], q_norm), expected, dtype=impl.dtype,
                 what="L_BC - sum_i eta Q_i / mean|q_norm_i|", **_policy_vars(c, eh, lip, bc, q, eta, norm))
    assert_close(clause_id, loss(*base, q, 0.0, c["mode"], c["w"]), bc, dtype=impl.dtype, what="eta = 0: L_BC",
                 **_policy_vars(c, eh, lip, bc, q, 0.0))


class _Constant:
    """An agent network returning the fixed vector c_i whatever x and k (Lipschitz constant 0)."""

    def __init__(self, c_i: F) -> None:
        self.c_i = c_i

    def __call__(self, x: F, k: Any) -> F:
        return np.broadcast_to(self.c_i, _f64(x).shape).copy()

    def __repr__(self) -> str:
        return f"_Constant({self.c_i.tolist()})"


@clause("dof.policy_loss", "constant_networks")
@given(case=_train_case(), eta=finite(0.0, 5.0), data=st.data(), explicit=st.booleans())
def test_policy_constant_networks(impl: Any, clause_id: str, case: dict[str, Any], eta: float, data: st.DataObject,
                                  explicit: bool) -> None:
    c = _rounded(impl, case)
    B, N, d = c["eps"].shape
    cons = round_to(impl.dtype, data.draw(hnp.arrays(np.float64, (N, d), elements=finite(-2.0, 2.0))))
    nets = [_Constant(cons[i]) for i in range(N)]
    q = round_to(impl.dtype, data.draw(_q_draw(B, N)))
    q_norm = round_to(impl.dtype, data.draw(_q_draw(data.draw(st.integers(1, 4)), N))) if explicit else None
    norm = np.mean(np.abs(q if q_norm is None else q_norm), axis=0)
    w = _weights(c["mode"], c["w"], N)
    # f(eps) - f(c) = w_i (eps_i - c_i) block by block, whatever x^k is: no schedule, no chain.
    bc = np.sum(w[None, :, None] ** 2 * (c["eps"] - cons[None]) ** 2, axis=(1, 2))
    want = bc - np.sum(eta * q / norm, axis=1)
    got = need(impl, clause_id)(c["x0"], c["k"], c["eps"], nets, c["b"], q, eta, c["mode"], c["w"], q_norm)
    eh = np.broadcast_to(cons[None], (B, N, d))
    assert_close(clause_id, got, want, dtype=impl.dtype,
                 what="constant networks: sum_i w_i^2 ||eps_i - c_i||^2 - eta sum_i Q_i / mean|Q'_i|",
                 **_policy_vars(c, eh, 0.0, bc, q, eta, None if q_norm is None else norm),
                 inputs={"mode": c["mode"], "q_norm given": explicit})


@clause("dof.policy_loss", "q_scale_invariant")
@given(case=_train_case(), eta=finite(0.1, 5.0), data=st.data(), seed=seeds())
def test_policy_q_scale_invariant(impl: Any, clause_id: str, case: dict[str, Any], eta: float, data: st.DataObject,
                                  seed: int) -> None:
    c = _rounded(impl, case)
    B, N, d = c["eps"].shape
    q = round_to(impl.dtype, data.draw(_q_draw(B, N)))
    nets = _agents(c["seed"], N, d)
    base = (c["x0"], c["k"], c["eps"], nets, c["b"])
    loss = need(impl, clause_id)
    ref_loss = _f64(loss(*base, q, eta, c["mode"], c["w"]))
    _, eh, _ = _per_agent(c, nets)
    rng = np.random.default_rng(seed)
    tol = _policy_vars(c, eh, max(a.lip for a in nets), np.abs(ref_loss), q, eta)
    tol["qmag"] = 2 * tol["qmag"]  # two losses compared, each with its own rounding of the Q term
    for what, factor in (("all Q scaled by c", np.full(N, rng.uniform(0.1, 10.0))),
                         ("each agent's Q scaled by its own c_j", rng.uniform(0.1, 10.0, N))):
        scaled = round_to(impl.dtype, q * factor)
        assert_close(clause_id, loss(*base, scaled, eta, c["mode"], c["w"]), ref_loss, dtype=impl.dtype,
                     what=f"L unchanged when {what}", **tol, inputs={"c": factor})


@clause("dof.policy_loss", "matches_reference")
@given(case=_train_case(), eta=finite(0.0, 5.0), data=st.data(), explicit=st.booleans())
def test_policy_matches_reference(impl: Any, clause_id: str, case: dict[str, Any], eta: float, data: st.DataObject,
                                  explicit: bool) -> None:
    c = _rounded(impl, case)
    B, N, d = c["eps"].shape
    q = round_to(impl.dtype, data.draw(_q_draw(B, N)))
    q_norm = round_to(impl.dtype, np.abs(q[::-1]) + 0.5) if explicit else None
    nets = _agents(c["seed"], N, d)
    args = (c["x0"], c["k"], c["eps"], nets, c["b"], q, eta, c["mode"], c["w"], q_norm)
    exp = ref.policy_loss(*args)
    _, eh, _ = _per_agent(c, nets)
    bc = ref.train_step(*args[:5], c["mode"], c["w"])
    assert_close(clause_id, need(impl, clause_id)(*args), exp, dtype=impl.dtype,
                 **_policy_vars(c, eh, max(a.lip for a in nets), bc, q, eta,
                                None if q_norm is None else np.mean(np.abs(q_norm), axis=0)))


_QN = np.ones((2, 2))


def _bad_policy_cases() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    base = (_X0, 1, _EPS, _NETS, _B3)
    nan_q = _QN.copy()
    nan_q[1, 0] = np.nan
    return [
        ((*base, np.ones((2, 3)), 1.0), {}),                     # q_new for three agents
        ((*base, nan_q, 1.0), {}),
        ((*base, _QN, -1.0), {}),                                # eta < 0
        ((*base, np.array([[0.0, 1.0], [0.0, 2.0]]), 1.0), {}),  # agent 1 has E|Q| = 0
        ((*base, _QN, 1.0), {"q_norm": np.array([[1.0, 0.0], [2.0, 0.0]])}),   # agent 2's normaliser is 0
        ((*base, _QN, 1.0), {"q_norm": np.ones(2)}),                          # q_norm of rank 1
        ((_X0, 0, _EPS, _NETS, _B3, _QN, 1.0), {}),              # k = 0 (train_step domain)
    ]


_BAD_POLICY = _bad_policy_cases()


@clause("dof.policy_loss", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_POLICY))))
def test_policy_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_POLICY[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)


# ---- dof.planner_loss -----------------------------------------------------------------


class _IgnoreCond:
    """A conditional network that ignores its condition."""

    def __init__(self, net: _Agent) -> None:
        self.net = net

    def __call__(self, x: F, k: Any, c: F) -> F:
        return self.net(x, k)

    def __repr__(self) -> str:
        return f"_IgnoreCond({self.net!r})"


@clause("dof.planner_loss", "condition_dropout")
@given(case=_train_case(), dy=st.integers(1, 3), data=st.data(), given_empty=st.booleans())
def test_planner_condition_dropout(impl: Any, clause_id: str, case: dict[str, Any], dy: int, data: st.DataObject,
                                   given_empty: bool) -> None:
    c = _rounded(impl, case)
    B, N, d = c["eps"].shape
    nets = _agents(c["seed"], N, d, cond=dy)
    y1 = round_to(impl.dtype, data.draw(hnp.arrays(np.float64, (B, dy), elements=finite(-5.0, 5.0))))
    y2 = round_to(impl.dtype, data.draw(hnp.arrays(np.float64, (B, dy), elements=finite(-5.0, 5.0))))
    drop = data.draw(hnp.arrays(np.int64, (B,), elements=st.integers(0, 1)))
    empty = round_to(impl.dtype, data.draw(hnp.arrays(np.float64, (dy,), elements=finite(-2.0, 2.0)))) \
        if given_empty else None
    nothing = np.zeros(dy) if empty is None else empty
    loss = need(impl, clause_id)
    base = (c["x0"], c["k"], c["eps"], nets, c["b"])
    got1 = _f64(loss(*base, y1, drop, c["mode"], c["w"], empty))
    got2 = _f64(loss(*base, y2, drop, c["mode"], c["w"], empty))
    cond = np.where(drop[:, None] == 1, nothing[None, :], y1)
    _, eh, expected = _per_agent(c, nets, cond)
    tol = _tol_vars(c, _g(c, eh, max(a.lip for a in nets)))
    assert_close(clause_id, got1, expected, dtype=impl.dtype,
                 what="b = 0 rows use y, b = 1 rows use the empty condition", **tol, inputs={"b": drop})
    dropped = drop == 1
    assert_close(clause_id, got2[dropped], got1[dropped], dtype=impl.dtype,
                 what="rows with b = 1 do not depend on y", **{**tol, "g": tol["g"][dropped]})


@clause("dof.planner_loss", "reduces_to_train_step")
@given(case=_train_case(), dy=st.integers(1, 3), data=st.data())
def test_planner_reduces_to_train_step(impl: Any, clause_id: str, case: dict[str, Any], dy: int,
                                       data: st.DataObject) -> None:
    c = _rounded(impl, case)
    B, N, d = c["eps"].shape
    nets = _agents(c["seed"], N, d)
    y = round_to(impl.dtype, data.draw(hnp.arrays(np.float64, (B, dy), elements=finite(-5.0, 5.0))))
    drop = data.draw(hnp.arrays(np.int64, (B,), elements=st.integers(0, 1)))
    base = (c["x0"], c["k"], c["eps"])
    got = need(impl, clause_id)(*base, [_IgnoreCond(a) for a in nets], c["b"], y, drop, c["mode"], c["w"])
    expected = ref.train_step(*base, nets, c["b"], c["mode"], c["w"])  # the float64 reference
    _, eh, _ = _per_agent(c, nets)
    assert_close(clause_id, got, expected, dtype=impl.dtype, what="condition-free networks: dof.train_step",
                 **_tol_vars(c, _g(c, eh, max(a.lip for a in nets))))


@clause("dof.planner_loss", "matches_reference")
@given(case=_train_case(), dy=st.integers(1, 3), data=st.data(), given_empty=st.booleans())
def test_planner_matches_reference(impl: Any, clause_id: str, case: dict[str, Any], dy: int, data: st.DataObject,
                                   given_empty: bool) -> None:
    c = _rounded(impl, case)
    B, N, d = c["eps"].shape
    nets = _agents(c["seed"], N, d, cond=dy)
    y = round_to(impl.dtype, data.draw(hnp.arrays(np.float64, (B, dy), elements=finite(-5.0, 5.0))))
    drop = data.draw(hnp.arrays(np.int64, (B,), elements=st.integers(0, 1)))
    empty = round_to(impl.dtype, np.linspace(-1.0, 1.0, dy)) if given_empty else None
    args = (c["x0"], c["k"], c["eps"], nets, c["b"], y, drop, c["mode"], c["w"], empty)
    cond = np.where(drop[:, None] == 1, np.zeros(dy) if empty is None else empty, y)
    _, eh, _ = _per_agent(c, nets, cond)
    assert_close(clause_id, need(impl, clause_id)(*args), ref.planner_loss(*args), dtype=impl.dtype,
                 **_tol_vars(c, _g(c, eh, max(a.lip for a in nets))))


_CNETS = _agents(2, 2, 2, cond=1)
_Y = np.ones((2, 1))


def _bad_planner_cases() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    base = (_X0, 1, _EPS, _CNETS, _B3)
    return [
        ((*base, _Y, np.array([0, 2])), {}),                     # b not in {0, 1}
        ((*base, _Y, np.array([0.5, 1.0])), {}),
        ((*base, _Y, np.array([0, 1, 0])), {}),                  # b of the wrong shape
        ((*base, np.ones((3, 1)), np.array([0, 1])), {}),        # y with 3 rows
        ((*base, np.full((2, 1), np.nan), np.array([0, 1])), {}),
        ((*base, _Y, np.array([0, 1])), {"empty": np.zeros(2)}),  # empty of the wrong width
        ((_X0, 4, _EPS, _CNETS, _B3, _Y, np.array([0, 1])), {}),  # k = K + 1 (train_step domain)
    ]


_BAD_PLANNER = _bad_planner_cases()


@clause("dof.planner_loss", "rejects_out_of_domain")
@given(i=st.sampled_from(range(len(_BAD_PLANNER))))
def test_planner_rejects_out_of_domain(impl: Any, clause_id: str, i: int) -> None:
    args, kwargs = _BAD_PLANNER[i]
    assert_raises_domain(need(impl, clause_id), clause_id, *args, **kwargs)
