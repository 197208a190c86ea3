"""The production path beyond the conformance suite: sampler loops against the clause functions
they fold, torch.compile, bfloat16, value checks on and off, independence from the reference."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from diffrl_ref import fast
from diffrl_ref.fast import ddim, ddpm, diffusion_ql, dpm_solver, unchecked
from diffrl_ref.fast.nets import DiffusionQLNet
from diffrl_ref.fast.schedule import Schedule

EPS32 = torch.finfo(torch.float32).eps
FAST = Path(fast.__file__).parent


def _eps(net: torch.nn.Module, s: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    def eps_fn(x: Tensor, k: Tensor) -> Tensor:
        out: Tensor = net(x, k, s)
        return out

    return eps_fn


def _net(seed: int = 0, d: int = 3, ds: int = 4) -> tuple[DiffusionQLNet, Tensor]:
    torch.manual_seed(seed)
    return DiffusionQLNet(ds, d, hidden=32).double(), torch.randn(5, ds, dtype=torch.float64)


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


def test_schedule_tables_are_float64_accurate() -> None:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    s = Schedule.from_betas(betas, dtype=torch.float32)
    ab64 = torch.cumprod(1 - betas, 0)
    # one rounding per entry, not a float32 cumulative product's K roundings
    assert torch.allclose(s.alpha_bar[1:].double(), ab64, rtol=EPS32, atol=0)
    assert torch.allclose(s.one_minus_alpha_bar[1:].double(), 1 - ab64, rtol=2 * EPS32, atol=0)
    assert s.alpha_bar[0] == 1 and s.beta_tilde[1] == 0


@pytest.mark.parametrize("betas, why", [([0.1, 1.0], "(0, 1)"), ([0.1, float("nan")], "finite"),
                                         ([[0.1]], "shape (K,)")])
def test_schedule_rejects_bad_betas(betas: list[float], why: str) -> None:
    with pytest.raises(ValueError, match=r"schedule\.alpha_bar: .*" + why.replace("(", r"\(").replace(")", r"\)")):
        Schedule.from_betas(torch.tensor(betas, dtype=torch.float64))


def test_ddim_sampler_equals_chained_steps() -> None:
    """The folded loop (two scalars per step) equals the clause ddim.step applied along tau."""
    net, s = _net()
    sched = Schedule.linear(100, dtype=torch.float64)
    tau = ddim.uniform_tau(100, 7)
    x_K = torch.randn(5, 3, dtype=torch.float64)
    z = torch.randn(len(tau), 5, 3, dtype=torch.float64)
    eps_fn = _eps(net, s)
    got = ddim.DDIMSampler(sched, tau, eta=0.5)(x_K, eps_fn, z)
    x = x_K
    prev = [0, *tau[:-1]]
    for i in range(len(tau) - 1, -1, -1):
        x = ddim.step(x, eps_fn(x, torch.full((5,), tau[i])), sched, tau[i], prev[i], 0.5, z[i])
    assert torch.allclose(got, x, rtol=1e-12, atol=1e-12)


def test_ancestral_sampler_equals_chained_reverse_steps() -> None:
    net, s = _net(1)
    sched = Schedule.vp(8, dtype=torch.float64)
    x_K = torch.randn(5, 3, dtype=torch.float64)
    z = torch.randn(8, 5, 3, dtype=torch.float64)
    eps_fn = _eps(net, s)
    for variance in ddpm.VARIANCES:
        got = ddpm.AncestralSampler(sched, variance)(x_K, eps_fn, z)
        x = x_K
        for k in range(8, 0, -1):
            x = ddpm.reverse_step(x, eps_fn(x, torch.full((5,), k)), sched, k, z[k - 1], variance)
        assert torch.allclose(got, x, rtol=1e-12, atol=1e-12), variance


def test_dpm_solver_sampler_equals_pp_2m_on_the_schedule_levels() -> None:
    net, s = _net(2)
    sched = Schedule.linear(200, dtype=torch.float64)
    tau = ddim.uniform_tau(200, 6)
    x_K = torch.randn(5, 3, dtype=torch.float64)
    got = dpm_solver.DPMSolverSampler(sched, tau)(x_K, _eps(net, s))
    ks = list(reversed(tau))
    grid = [sched.ab64(k) for k in ks]
    level_to_k = dict(zip(grid, ks, strict=True))
    # pp_2m to the last noisy level, then the final first-order step onto alpha_bar = 1 is x0_hat
    x = dpm_solver.pp_2m(x_K, lambda x, ab: net(x, torch.full((5,), level_to_k[ab]), s), grid)
    k1 = torch.full((5,), ks[-1])
    x0 = ddpm.x0_from_eps(x, net(x, k1, s), sched, k1)
    assert torch.allclose(got, x0, rtol=1e-10, atol=1e-10)


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
    for g, h in zip(eager, compiled, strict=True):
        assert torch.allclose(g, h, rtol=1e-6, atol=1e-7)


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
    # 5 steps x 4 layers of bfloat16 rounding (eps = 2^-7), each amplified by at most the data scale
    assert err <= 40 * 2.0**-7 * scale, (float(err), float(scale))


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
            assert torch.allclose(graph(x), sampler(x, lambda a, k: net(a, k, s)), atol=1e-6)
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
