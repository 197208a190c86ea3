"""The production path beyond the conformance suite: sampler loops against the clause functions
they fold, torch.compile, bfloat16, value checks on and off, independence from the reference."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from diffrl_ref import fast, spec
from diffrl_ref.fast import ddim, ddpm, diffusion_ql, dpm_solver, nets, unchecked
from diffrl_ref.fast.nets import DiffusionQLNet
from diffrl_ref.fast.schedule import Schedule

# Machine epsilons (2^-52, 2^-23, 2^-7): one correctly rounded operation errs by at most half of one.
EPS64, EPS32, EPS_BF16 = spec.EPS["float64"], spec.EPS["float32"], spec.EPS["bfloat16"]
FAST = Path(fast.__file__).parent


def _eps(net: torch.nn.Module, s: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    def eps_fn(x: Tensor, k: Tensor) -> Tensor:
        out: Tensor = net(x, k, s)
        return out

    return eps_fn


def _net(seed: int = 0, d: int = 3, ds: int = 4) -> tuple[DiffusionQLNet, Tensor]:
    torch.manual_seed(seed)
    return DiffusionQLNet(ds, d, hidden=32).double(), torch.randn(5, ds, dtype=torch.float64)


def _recorded(eps_fn: Callable[[Tensor, Tensor], Tensor]) -> tuple[Callable[[Tensor, Tensor], Tensor],
                                                                    list[tuple[Tensor, Tensor, Tensor]]]:
    """eps_fn that records each call (x, k, eps_hat): a sampler's state before every step."""
    calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def fn(x: Tensor, k: Tensor) -> Tensor:
        e = eps_fn(x, k)
        calls.append((x.detach().clone(), k.clone(), e.detach().clone()))
        return e

    return fn, calls


def _within(clause_id: str, got: Tensor, want: Tensor, atol: Tensor | np.ndarray, what: str) -> None:
    """|got - want| <= atol entrywise; the message names the clause and the worst entry."""
    err = (got - want).abs().detach().numpy()
    bound = np.broadcast_to(np.asarray(atol, dtype=np.float64), err.shape)
    worst = np.unravel_index(int(np.argmax(err - bound)), err.shape)
    assert (err <= bound).all(), (f"{clause_id} [{what}]: error {err[worst]:.3g} > bound {bound[worst]:.3g} "
                                  f"at {tuple(int(i) for i in worst)}")


def test_production_path_never_imports_the_reference() -> None:
    """The reference is an independent oracle only if the fast path shares none of its code."""
    for path in FAST.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            for n in names:
                assert "reference" not in n and "suite" not in n and not n.startswith(".."), f"{path.name}: {n}"


def test_networks_match_diffusion_ql() -> None:
    """fast.nets implements no clause; its time embedding and layer shapes are checked here against
    Diffusion-QL's agents/model.py (16-wide sinusoidal embedding, 2-layer Mish MLP, 3 x 256 Mish)."""
    from diffrl_ref.fast.nets import SinusoidalEmbedding

    emb = SinusoidalEmbedding(16)
    j = torch.arange(8, dtype=torch.float64)
    w = torch.exp(-j * math.log(10000.0) / 7)  # 10000^(-j / (dim/2 - 1)), float64
    # float32 freqs: exp of j * c with c and the product rounded (argument error <= log(10000) EPS32), plus 1 ulp
    _within("fast.nets", emb.freqs.double(), w, ((math.log(10000.0) + 1) * EPS32 * w).numpy(), "frequencies")
    k = torch.tensor([1, 7, 100, 1000])
    angle = k.double().unsqueeze(-1) * emb.freqs.double()
    want = torch.cat([angle.sin(), angle.cos()], dim=-1)
    # the float32 angle k w rounds once (|k w| EPS32 / 2 absolute), float32 sin and cos add about 1 ulp of 1
    _within("fast.nets", emb(k).double(), want, (angle.abs() * EPS32 / 2 + EPS32).repeat(1, 2).numpy(), "embedding")
    net = DiffusionQLNet(state_dim=11, action_dim=3)
    shapes = [tuple(p.shape) for p in net.parameters()]
    assert shapes == [(32, 16), (32,), (16, 32), (16,), (256, 3 + 16 + 11), (256,), (256, 256), (256,),
                      (256, 256), (256,), (3, 256), (3,)], shapes
    assert [type(m).__name__ for m in net.mid] == ["Linear", "Mish"] * 3
    assert all(isinstance(m, (torch.nn.Linear, nets.Mish)) for m in net.mid)


def test_mish_is_mish_to_a_few_ulps_forward_and_backward() -> None:
    """fast.nets.Mish (one exponential, hand-written derivative) against mish and its derivative evaluated in
    float64 on float32 inputs from -100 to 100: within 8 float32 ulps of the value (six roundings of the
    formula, and the float64 oracle's own error, far below) plus the smallest normal float32 (x far below 0
    underflows exp, where mish is about x e^x: below 1e-41 there); its derivative within 16 ulps of the sizes of
    its two terms (they cancel where mish' = 0); NaN stays
    NaN. ATen's own kernel is checked the same way, so the oracle is not ours alone. float64: gradcheck."""
    from diffrl_ref.fast.nets import Mish

    x32 = torch.cat([torch.linspace(-100, 100, 20001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 19.99, 20.0, 20.01])])
    x = x32.double()
    sp = torch.log1p(torch.exp(-x.abs())) + x.clamp(min=0)  # softplus in float64, no overflow
    t = torch.tanh(sp)
    want = x * t
    dwant = t + x * (1 - t * t) * torch.sigmoid(x)
    tiny = torch.finfo(torch.float32).tiny
    for name, f in (("fast.nets.Mish", Mish()), ("torch mish", torch.nn.functional.mish)):
        xi = x32.clone().requires_grad_(True)
        y = f(xi)
        y.sum().backward()
        _within(name, y.detach().double(), want, (8 * EPS32 * want.abs() + tiny).numpy(), "value")
        assert xi.grad is not None
        # the two terms cancel near x = -1.19 (mish' = 0): the bound is on their sizes, not on their sum;
        # 1 - t^2 cancels where t is near 1 (x > 0): an absolute error of about eps |x| there
        terms = t.abs() + (x * (1 - t * t) * torch.sigmoid(x)).abs() + x.clamp(min=0)
        # + 1e-30: where exp(x) is subnormal (x < -87) both kernels lose the derivative's digits (~1e-37)
        _within(name, xi.grad.double(), dwant, (16 * EPS32 * terms + 1e-30).numpy(), "derivative")
    assert torch.isnan(Mish()(torch.tensor([float("nan")]))).all()
    xd = torch.linspace(-30, 30, 61, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(Mish(), (xd,))
    with pytest.raises(AssertionError, match="value"):  # the check can fail: softplus is not mish
        _within("softplus", torch.nn.functional.softplus(x32).double(), want, (8 * EPS32 * want.abs() + tiny).numpy(),
                "value")


def test_schedule_tables_are_float64_accurate() -> None:
    """A float32 table entry is the exact value rounded once, not a float32 cumulative product's k roundings."""
    K = 1000
    betas = torch.linspace(1e-4, 0.02, K, dtype=torch.float64)
    s = Schedule.from_betas(betas, dtype=torch.float32)
    # Exact oracle: the betas are binary floats, so prod_{i<=k} (1 - beta_i) is an exact rational number.
    ab_exact, prod = [], Fraction(1)
    for b in betas.tolist():
        prod *= 1 - Fraction(b)
        ab_exact.append(prod)
    ab = torch.tensor([float(v) for v in ab_exact], dtype=torch.float64)  # float() rounds correctly
    one_minus = torch.tensor([float(1 - v) for v in ab_exact], dtype=torch.float64)
    k = torch.arange(1, K + 1, dtype=torch.float64)
    # Schedule forms log alpha_bar_k = cumsum(log1p(-beta)) in float64: k roundings of partial sums of the
    # same sign, each at most 1 ulp of |log alpha_bar_k|, so delta_k <= (k + 1) EPS64 |log alpha_bar_k|. exp
    # adds 1 ulp (EPS64); -expm1 gives 1 - alpha_bar_k with relative error alpha_bar delta_k / (1 - alpha_bar)
    # + EPS64 <= (k + 2) EPS64 (since -a log a <= 1 - a). The oracle's float() adds EPS64 / 2, the cast to
    # float32 EPS32 / 2. A float32 cumulative product exceeds this after a few steps.
    delta = (k + 1) * EPS64 * torch.log(ab).abs()
    rtol_ab = (1 + EPS32 / 2) * (1 + delta + 1.5 * EPS64) - 1
    rtol_one_minus = (1 + EPS32 / 2) * (1 + (k + 2.5) * EPS64) - 1
    _within("schedule.alpha_bar", s.alpha_bar[1:].double(), ab, (rtol_ab * ab).numpy(), "alpha_bar_k")
    _within("schedule.alpha_bar", s.one_minus_alpha_bar[1:].double(), one_minus,
            (rtol_one_minus * one_minus).numpy(), "1 - alpha_bar_k")
    assert s.alpha_bar[0] == 1 and s.beta_tilde[1] == 0


@pytest.mark.parametrize("betas, why", [([0.1, 1.0], "(0, 1)"), ([0.1, float("nan")], "finite"),
                                         ([[0.1]], "shape (K,)")])
def test_schedule_rejects_bad_betas(betas: list[float], why: str) -> None:
    with pytest.raises(ValueError, match=r"schedule\.alpha_bar: .*" + why.replace("(", r"\(").replace(")", r"\)")):
        Schedule.from_betas(torch.tensor(betas, dtype=torch.float64))


def _ddim_step_scale(x: Tensor, e: Tensor, z: Tensor, ab_k: float, ab_p: float, sig: float) -> Tensor:
    """The rounding scale of one ddim.step k -> k_prev, as derived in spec/ddim.yaml (tolerance of ddim.step)."""
    q, s = math.sqrt(ab_p / ab_k), math.sqrt(1 - ab_k)
    room = 1 - ab_p - sig**2
    c = math.sqrt(max(room, 0.0))
    inv_c = 1 / c if room > 0 else 0.0  # terms with c = 0 or sigma = 0 dropped, as the derivation says
    scale = q * (2 * x.abs() + s * e.abs() * (2 + 1 / (1 - ab_k))) + e.abs() * (c + (4 + 1 / (1 - ab_k)) * inv_c)
    if sig > 0:
        scale = scale + z.abs() * sig * (1 + 1 / (1 - ab_k / ab_p) + 1 / (1 - ab_p) + 1 / (1 - ab_k))
    return scale


def test_ddim_sampler_equals_chained_steps() -> None:
    """Every step of the folded loop (two scalars per step) is the clause ddim.step along tau.

    Compared step by step from the loop's own state, so the bound is one step's rounding (the
    ddim.step rule in float64), not the network's amplification of earlier differences.
    """
    net, s = _net()
    K, eta = 100, 0.5
    sched = Schedule.linear(K, dtype=torch.float64)
    tau = ddim.uniform_tau(K, 7)
    x_K = torch.randn(5, 3, dtype=torch.float64)
    z = torch.randn(len(tau), 5, 3, dtype=torch.float64)
    eps_fn, calls = _recorded(_eps(net, s))
    got = ddim.DDIMSampler(sched, tau, eta=eta)(x_K, eps_fn, z)
    states = [x for x, _, _ in calls] + [got]
    assert len(calls) == len(tau) and torch.equal(states[0], x_K)
    prev = [0, *tau[:-1]]
    rule = spec.clause("ddim.step").tolerance
    for j, i in enumerate(range(len(tau) - 1, -1, -1)):
        x, k, e = calls[j]
        assert torch.equal(k, torch.full((5,), tau[i])), (j, k)
        want = ddim.step(x, e, sched, tau[i], prev[i], eta, z[i])
        ab_k, ab_p = sched.ab64(tau[i]), sched.ab64(prev[i])
        sig = eta * math.sqrt(sched.om64(prev[i]) / sched.om64(tau[i])) * math.sqrt(1 - ab_k / ab_p)
        atol = rule.atol("float64", expected=want.abs().numpy(), K=K,
                         scale=_ddim_step_scale(x, e, z[i], ab_k, ab_p, sig).numpy())
        _within("ddim.sample", states[j + 1], want, atol, f"step {tau[i]} -> {prev[i]}")


def test_ancestral_sampler_equals_chained_reverse_steps() -> None:
    """Every step of the folded ancestral loop is the clause ddpm.reverse_step, within its float64 rule."""
    net, s = _net(1)
    K = 8
    sched = Schedule.vp(K, dtype=torch.float64)
    x_K = torch.randn(5, 3, dtype=torch.float64)
    z = torch.randn(K, 5, 3, dtype=torch.float64)
    rule = spec.clause("ddpm.reverse_step").tolerance
    for variance in ddpm.VARIANCES:
        eps_fn, calls = _recorded(_eps(net, s))
        got = ddpm.AncestralSampler(sched, variance)(x_K, eps_fn, z)
        states = [x for x, _, _ in calls] + [got]
        assert len(calls) == K and torch.equal(states[0], x_K)
        for j, k in enumerate(range(K, 0, -1)):
            x, kk, e = calls[j]
            assert torch.equal(kk, torch.full((5,), k)), (j, kk)
            want = ddpm.reverse_step(x, e, sched, k, z[k - 1], variance)
            alpha_k = 1 - float(sched.betas64[k - 1])
            gap = float(sched.one_minus_alpha_bar64[max(k - 1, 1)])
            atol = rule.atol("float64", K=K, scale=((x.abs() + e.abs() + z[k - 1].abs()) / math.sqrt(alpha_k)).numpy(),
                             gap=gap, extrap=0.0)
            _within("ddpm.reverse_step", states[j + 1], want, atol, f"{variance}, step {k}")


def test_dpm_solver_sampler_equals_pp_2m_on_the_schedule_levels() -> None:
    net, s = _net(2)
    K = 200
    sched = Schedule.linear(K, dtype=torch.float64)
    tau = ddim.uniform_tau(K, 6)
    x_K = torch.randn(5, 3, dtype=torch.float64)
    eps_fn, calls = _recorded(_eps(net, s))
    got = dpm_solver.DPMSolverSampler(sched, tau)(x_K, eps_fn)
    ks = list(reversed(tau))
    grid = [sched.ab64(k) for k in ks]
    level_to_k = dict(zip(grid, ks, strict=True))
    # pp_2m to the last noisy level, then the final first-order step onto alpha_bar = 1 is x0_hat
    eps_at, pp_calls = _recorded(lambda x, k: net(x, k, s))
    x = dpm_solver.pp_2m(x_K, lambda x, ab: eps_at(x, torch.full((5,), level_to_k[ab])), grid)
    # Up to the last noisy level both run PP2M's steps with the same coefficients: the same operations.
    assert len(calls) == len(pp_calls) + 1
    for (a, ka, _), (b, kb, _) in zip(calls, pp_calls, strict=False):
        assert torch.equal(a, b) and torch.equal(ka, kb)
    assert torch.equal(calls[-1][0], x)
    k1 = torch.full((5,), ks[-1])
    e = net(x, k1, s)
    x0 = ddpm.x0_from_eps(x, e, sched, k1)
    # The last step alone differs: x0 = x / alpha - (sigma / alpha) eps against ddpm.x0_from_eps, bounded by
    # that clause's rule in float64.
    ab = sched.ab64(ks[-1])
    atol = spec.clause("ddpm.x0_from_eps").tolerance.atol(
        "float64", expected=x0.detach().abs().numpy(), xk=x.detach().abs().numpy(), e=e.detach().abs().numpy(),
        sqrt_ab=math.sqrt(ab), sqrt_1m_ab=math.sqrt(1 - ab), K=K)
    _within("dpm_solver.pp_2m", got, x0, atol, "x0 at the last level")


def assert_compiled_equals_eager(fn: Callable[[], Tensor]) -> None:
    torch._dynamo.reset()
    eager = fn()
    with unchecked():
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)()
    assert torch.equal(eager, compiled)


def test_samplers_compile_fullgraph() -> None:
    """No graph break in any sampling loop: compile- and CUDA-graph-friendly by construction."""
    torch.manual_seed(0)
    net = DiffusionQLNet(4, 3, hidden=32)
    s, x_K = torch.randn(5, 4), torch.randn(5, 3)
    sched = Schedule.vp(5)
    eps_fn = _eps(net, s)
    dd = ddim.DDIMSampler(Schedule.linear(50), ddim.uniform_tau(50, 5))
    dpm = dpm_solver.DPMSolverSampler(Schedule.linear(50), ddim.uniform_tau(50, 5))
    anc = ddpm.AncestralSampler(sched, "beta_tilde", clip=1.0)
    z = torch.randn(5, 5, 3)
    with torch.no_grad():
        assert_compiled_equals_eager(lambda: dd(x_K, eps_fn))
        assert_compiled_equals_eager(lambda: dpm(x_K, eps_fn))
        assert_compiled_equals_eager(lambda: anc(x_K, eps_fn, z))
        act = diffusion_ql.ActionSampler(sched)
        assert_compiled_equals_eager(lambda: act(s, net, x_K, z))


def test_training_loss_compiles_with_the_same_gradient() -> None:
    torch.manual_seed(0)
    net = DiffusionQLNet(4, 3, hidden=32)
    sched = Schedule.vp(5)
    a, s = torch.rand(8, 3) * 2 - 1, torch.randn(8, 4)
    k, eps = torch.randint(1, 6, (8,)), torch.randn(8, 3)

    def loss() -> Tensor:
        return diffusion_ql.bc_loss(a, s, net, sched, k, eps).mean()

    eager = torch.autograd.grad(loss(), list(net.parameters()))
    torch._dynamo.reset()
    with unchecked():
        compiled = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(),
                                       list(net.parameters()))
    # aot_eager runs the traced forward and backward graphs with the eager aten kernels, in autograd's order on
    # the same inputs, so no operation is rounded differently: the gradients agree bit for bit (as the forward
    # passes do in assert_compiled_equals_eager). A difference means a changed graph, not rounding.
    for g, h in zip(eager, compiled, strict=True):
        assert torch.equal(g, h), float((g - h).abs().max())


def test_bfloat16_sampling_tracks_float32() -> None:
    """bfloat16 runs end to end; its DDIM sample differs from float32 by O(bfloat16 eps), not more."""
    torch.manual_seed(0)
    net = DiffusionQLNet(4, 3, hidden=32)
    s, x_K = torch.randn(64, 4), torch.randn(64, 3)
    tau = ddim.uniform_tau(50, 5)
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        sampler = ddim.DDIMSampler(Schedule.linear(50, dtype=dt), tau)
        netd = DiffusionQLNet(4, 3, hidden=32).to(dt)
        netd.load_state_dict(net.state_dict())
        with torch.no_grad():
            out[dt] = sampler(x_K.to(dt), _eps(netd, s.to(dt))).float()
    scale = out[torch.float32].abs().max()
    err = (out[torch.bfloat16] - out[torch.float32]).abs().max()
    assert out[torch.bfloat16].dtype == torch.float32 and torch.isfinite(out[torch.bfloat16]).all()
    # A budget of bfloat16 roundings (EPS_BF16 each) of values up to the data scale, to first order: per step
    # the update x c_x + c_eps eps_hat rounds twice, and the network's output carries about one rounding per
    # layer (4 linear, 3 Mish, the time embedding), damped by |c_eps| < 0.2: (2 + 0.2 x 8) x prod c_x (< 1.3
    # on this schedule) < 5 per step. 8 per step leaves room for cancellation inside the layers, which makes
    # their relative error exceed one rounding. Measured: 1.1 EPS_BF16 * scale in all.
    steps, roundings_per_step = len(tau), 8
    assert err <= steps * roundings_per_step * EPS_BF16 * scale, (float(err), float(scale))


def test_value_checks_run_eagerly_and_are_skipped_when_unchecked() -> None:
    sched = Schedule.linear(10)
    x, e = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"^ddpm\.noise: k must lie in \[1, 10\]"):
        ddpm.noise(x, e, sched, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match=r"^ddpm\.noise: x0 must be finite"):
        ddpm.noise(torch.full((2, 3), math.nan), e, sched, 3)
    assert fast.checking()
    with unchecked():
        assert not fast.checking()
        ddpm.noise(torch.full((2, 3), math.nan), e, sched, 3)  # a documented opt-out, used by hot loops
    assert fast.checking()
    # shape checks cost nothing and always run
    with unchecked(), pytest.raises(ValueError, match=r"^ddpm\.noise: shapes must match"):
        ddpm.noise(x, torch.zeros(2, 4), sched, 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_finite_flag_is_exactly_isfinite_all(dtype: torch.dtype) -> None:
    """The one-reduction test (fast._checks.finite_flag) against torch.isfinite(x).all() at the cases a sum
    could get wrong: a single NaN or inf among finite values, +inf and -inf together (their sum is NaN, still
    caught), and finite values at the dtype's maximum, whose sum in the dtype itself overflows (a naive
    isfinite(x.sum()) would call them non-finite)."""
    from diffrl_ref.fast._checks import finite_flag

    big = torch.finfo(dtype).max
    cases = {"finite": torch.randn(64, 7, generator=torch.Generator().manual_seed(0)).to(dtype),
             "at max": torch.full((1000,), big, dtype=dtype), "at -max": torch.full((3, 5), -big, dtype=dtype),
             "empty": torch.zeros(0, 3, dtype=dtype)}
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.ones(33, 5, dtype=dtype)
        x[17, 3] = bad
        cases[f"one {bad}"] = x
    both = torch.zeros(8, dtype=dtype)
    both[2], both[5] = math.inf, -math.inf
    cases["inf and -inf"] = both
    for name, x in cases.items():
        assert bool(finite_flag(x)) == bool(torch.isfinite(x).all()), (name, dtype)
    assert not bool(torch.isfinite(cases["at max"].sum()))  # the overflow the float64 sum avoids is real


def test_sampler_rejects_a_network_that_returns_nan() -> None:
    sched = Schedule.linear(10)
    sampler = ddim.DDIMSampler(sched, [5, 10])
    with pytest.raises(ValueError, match=r"^ddim\.sample: eps_fn returned non-finite"):
        sampler(torch.zeros(2, 3), lambda x, k: torch.full_like(x, math.nan))
    with pytest.raises(ValueError, match=r"^ddim\.sample: eps_fn returned shape"):
        sampler(torch.zeros(2, 3), lambda x, k: torch.zeros(2, 1))


def test_graph_capture_needs_cuda() -> None:
    from diffrl_ref.fast.graphs import CapturedSampler

    if torch.cuda.is_available():
        sched = Schedule.linear(50, device="cuda")
        sampler = ddim.DDIMSampler(sched, ddim.uniform_tau(50, 5))
        net = DiffusionQLNet(4, 3).cuda()
        s, x = torch.randn(1, 4, device="cuda"), torch.randn(1, 3, device="cuda")
        graph = CapturedSampler(lambda x0: sampler(x0, lambda a, k: net(a, k, s)), [x])
        with torch.no_grad():
            want = sampler(x, lambda a, k: net(a, k, s))
            # Replay runs the captured float32 kernels; they may differ from the eager ones only in cuBLAS's
            # summation order: the same budget of roundings per step as the bfloat16 test, in EPS32.
            assert (graph(x) - want).abs().max() <= len(sampler.tau) * 8 * EPS32 * want.abs().max()
    else:
        with pytest.raises(ValueError, match="needs a CUDA device"):
            CapturedSampler(lambda x: x, [torch.zeros(1)])


# ---- planted bugs in the production path: the default run of the suite would catch them ---------

def _suite_failures(clause_id: str) -> dict[str, str]:
    """Run every conformance test of ``clause_id`` on the production path (float64); property -> failure."""
    from hypothesis import settings

    from diffrl_ref.adapters.fast import adapter
    from diffrl_ref.suite import profiles, selftest

    profiles.register()
    settings.load_profile("meta")
    impl = adapter("float64")
    failed: dict[str, str] = {}
    for reg in selftest.load_conformance().values():
        if reg.clause_id != clause_id or reg.prop in failed:
            continue
        try:
            reg.func(impl=impl, clause_id=clause_id)
        except AssertionError as exc:
            assert clause_id in str(exc), f"failure does not name {clause_id}: {exc}"
            failed[reg.prop] = str(exc).splitlines()[0]
    return failed


def _plant_ddim_variance_without_sqrt(mp: pytest.MonkeyPatch) -> None:
    """DDIM's sigma used as if it were the variance (sigma^2 scales z): 'a variance missing a square root'."""
    init = ddim.DDIMSampler.__init__

    def bad(self: ddim.DDIMSampler, *a: object, **kw: object) -> None:
        init(self, *a, **kw)  # type: ignore[arg-type]
        self.coef = [(k, c_x, c_e, sig**2) for k, c_x, c_e, sig in self.coef]

    mp.setattr(ddim.DDIMSampler, "__init__", bad)


def _plant_alpha_bar_off_by_one(mp: pytest.MonkeyPatch) -> None:
    """Every table read at k holds step k - 1's value (alpha_bar_k = prod_{i<k} alpha_i)."""
    import dataclasses

    build = Schedule.from_betas.__func__  # type: ignore[attr-defined]

    def bad(cls: type[Schedule], betas: Tensor, /, **kw: object) -> Schedule:
        s: Schedule = build(cls, betas, **kw)
        shift = {f: torch.cat([getattr(s, f)[:1], getattr(s, f)[:-1]]) for f in
                 ("alpha_bar", "one_minus_alpha_bar", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar")}
        return dataclasses.replace(s, **shift)

    mp.setattr(Schedule, "from_betas", classmethod(bad))


def _plant_pp2m_without_multistep_correction(mp: pytest.MonkeyPatch) -> None:
    """DPM-Solver++(2M) that drops the second-order term: first order at every step."""
    init = dpm_solver.PP2M.__init__

    def bad(self: dpm_solver.PP2M, *a: object, **kw: object) -> None:
        init(self, *a, **kw)  # type: ignore[arg-type]
        self.steps = [(A, B + C, 0.0) for A, B, C in self.steps]

    mp.setattr(dpm_solver.PP2M, "__init__", bad)


def _plant_ancestral_variance_swap(mp: pytest.MonkeyPatch) -> None:
    """The ancestral sampler always uses sigma^2 = beta_k, whatever variance was asked for."""
    init = ddpm.AncestralSampler.__init__

    def bad(self: ddpm.AncestralSampler, sched: Schedule, variance: str = "beta", clip: float | None = None) -> None:
        init(self, sched, "beta", clip)

    mp.setattr(ddpm.AncestralSampler, "__init__", bad)


@pytest.mark.parametrize("plant, clause_id", [
    (_plant_ddim_variance_without_sqrt, "ddim.sample"),
    (_plant_alpha_bar_off_by_one, "ddpm.noise"),
    (_plant_pp2m_without_multistep_correction, "dpm_solver.pp_2m"),
    (_plant_ancestral_variance_swap, "diffusion_ql.sample_action"),
], ids=lambda v: getattr(v, "__name__", v))
def test_planted_production_bug_is_caught(monkeypatch: pytest.MonkeyPatch, plant: Callable[[pytest.MonkeyPatch], None],
                                          clause_id: str) -> None:
    assert not _suite_failures(clause_id), "the unmodified production path must pass"
    plant(monkeypatch)
    assert _suite_failures(clause_id), f"planted bug {plant.__name__} was not caught on {clause_id}"
