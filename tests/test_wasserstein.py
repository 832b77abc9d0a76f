from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dale_monai.wasserstein import (
    class_conditional_w2,
    class_indices,
    gaussian_w2,
    gaussian_w2_to_samples,
    nuclear_norm,
    resample_labels,
    sqrtm_psd,
    weighted_mean_cov,
)

D64 = torch.float64


def rand_spd(d: int, gen: torch.Generator, rank: int | None = None, scale: float = 1.0) -> torch.Tensor:
    a = torch.randn(d, rank or d, generator=gen, dtype=D64) * scale
    return a @ a.T + (1e-1 * torch.eye(d, dtype=D64) if rank is None else 0)


def rotated(evals: list[float], gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(evals), len(evals), generator=gen, dtype=D64))
    return q @ torch.diag(torch.tensor(evals, dtype=D64)) @ q.T


def w2_scipy(mu1, cov1, mu2, cov2) -> float:
    r1 = scipy.linalg.sqrtm(cov1)
    cross = scipy.linalg.sqrtm(r1 @ cov2 @ r1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * np.real(cross)))


# ---------------------------------------------------------------- sqrtm_psd


def test_sqrtm_matches_scipy_batched():
    gen = torch.Generator().manual_seed(0)
    mats = torch.stack([rand_spd(5, gen) for _ in range(4)])
    roots = sqrtm_psd(mats)
    for m, r in zip(mats, roots):
        np.testing.assert_allclose(r.numpy(), np.real(scipy.linalg.sqrtm(m.numpy())), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(r @ r, m)


def test_sqrtm_gradcheck_distinct_and_repeated_eigenvalues():
    gen = torch.Generator().manual_seed(1)
    for mat in (rand_spd(4, gen), rotated([1.0, 1.0, 2.0, 2.0], gen), 3 * torch.eye(3, dtype=D64)):
        assert torch.autograd.gradcheck(sqrtm_psd, (mat.clone().requires_grad_(),))


def test_eigh_autograd_fails_where_sqrtm_psd_does_not():
    # The reason for the custom backward: eigh's gradient has 1 / (λ_i − λ_j) factors.
    mat = torch.diag(torch.tensor([1.0, 1.0, 4.0], dtype=D64))

    def naive(m):
        evals, evecs = torch.linalg.eigh(m)
        return (evecs * evals.sqrt()) @ evecs.T

    probe = torch.randn(3, 3, dtype=D64, generator=torch.Generator().manual_seed(2))
    m1 = mat.clone().requires_grad_()
    (naive(m1) * probe).sum().backward()
    assert not torch.isfinite(m1.grad).all()
    m2 = mat.clone().requires_grad_()
    (sqrtm_psd(m2) * probe).sum().backward()
    assert torch.isfinite(m2.grad).all()
    # for a diagonal matrix the exact derivative is probe_sym / (s_i + s_j)
    s = torch.tensor([1.0, 1.0, 2.0], dtype=D64)
    torch.testing.assert_close(m2.grad, 0.5 * (probe + probe.T) / (s[:, None] + s[None, :]))


def test_sqrtm_singular_finite_value_and_gradient():
    gen = torch.Generator().manual_seed(3)
    for mat in (rand_spd(5, gen, rank=1), rand_spd(5, gen, rank=3), torch.zeros(4, 4, dtype=D64)):
        m = mat.clone().requires_grad_()
        root = sqrtm_psd(m)
        torch.testing.assert_close(root @ root, mat, atol=1e-9, rtol=1e-7)
        root.sum().backward()
        assert torch.isfinite(m.grad).all()


def test_sqrtm_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        sqrtm_psd(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="floating"):
        sqrtm_psd(torch.zeros(3, 3, dtype=torch.long))


# ---------------------------------------------------------------- gaussian_w2


def test_gaussian_w2_matches_scipy_and_is_symmetric():
    gen = torch.Generator().manual_seed(4)
    for d in (1, 3, 8):
        mu1, mu2 = torch.randn(d, generator=gen, dtype=D64), torch.randn(d, generator=gen, dtype=D64)
        c1, c2 = rand_spd(d, gen), rand_spd(d, gen, scale=2.0)
        w = gaussian_w2(mu1, c1, mu2, c2)
        assert w.item() == pytest.approx(w2_scipy(mu1.numpy(), c1.numpy(), mu2.numpy(), c2.numpy()), rel=1e-9)
        assert w.item() == pytest.approx(gaussian_w2(mu2, c2, mu1, c1).item(), rel=1e-9)


def test_gaussian_w2_closed_forms():
    d = 4
    eye = torch.eye(d, dtype=D64)
    mu = torch.arange(d, dtype=D64)
    gen = torch.Generator().manual_seed(5)
    c = rand_spd(d, gen)
    assert gaussian_w2(mu, c, mu, c).item() == pytest.approx(0.0, abs=1e-10)
    # equal covariances: only the means count; commuting covariances: ‖√Σ1 − √Σ2‖_F²
    assert gaussian_w2(mu, c, mu + 1, c).item() == pytest.approx(d, rel=1e-10)
    assert gaussian_w2(mu, 4 * eye, mu, eye).item() == pytest.approx(d * (2 - 1) ** 2, rel=1e-12)


def test_gaussian_w2_batched():
    gen = torch.Generator().manual_seed(6)
    mu1, mu2 = torch.randn(3, 4, generator=gen, dtype=D64), torch.randn(3, 4, generator=gen, dtype=D64)
    c1 = torch.stack([rand_spd(4, gen) for _ in range(3)])
    c2 = torch.stack([rand_spd(4, gen) for _ in range(3)])
    batched = gaussian_w2(mu1, c1, mu2, c2)
    assert batched.shape == (3,)
    for i in range(3):
        assert batched[i].item() == pytest.approx(gaussian_w2(mu1[i], c1[i], mu2[i], c2[i]).item(), rel=1e-12)
    with pytest.raises(ValueError, match="cov2"):
        gaussian_w2(mu1, c1, mu2, c2[..., :3])


def test_gaussian_w2_gradcheck():
    gen = torch.Generator().manual_seed(7)
    args = (
        torch.randn(3, generator=gen, dtype=D64),
        rand_spd(3, gen),
        torch.randn(3, generator=gen, dtype=D64),
        rotated([0.5, 0.5, 2.0], gen),  # repeated eigenvalues
    )
    assert torch.autograd.gradcheck(gaussian_w2, tuple(a.clone().requires_grad_() for a in args))


def test_gaussian_w2_singular_finite():
    gen = torch.Generator().manual_seed(8)
    mu = torch.zeros(4, dtype=D64)
    for c1, c2 in (
        (rand_spd(4, gen, rank=1), rand_spd(4, gen, rank=1)),  # rank one
        (rand_spd(4, gen, rank=2), rand_spd(4, gen)),  # singular vs full rank
        (torch.zeros(4, 4, dtype=D64), torch.eye(4, dtype=D64)),  # a point mass
        (torch.eye(4, dtype=D64), torch.eye(4, dtype=D64)),  # repeated eigenvalues, identical
    ):
        a, b = c1.clone().requires_grad_(), c2.clone().requires_grad_()
        w = gaussian_w2(mu, a, mu + 0.5, b)
        assert torch.isfinite(w) and w >= 0
        assert w.item() == pytest.approx(w2_scipy(mu.numpy(), c1.numpy(), mu.numpy() + 0.5, c2.numpy()), abs=1e-6)
        w.backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


# ------------------------------------------------ nuclear norm / samples form


def test_nuclear_norm_value_and_min_norm_gradient():
    gen = torch.Generator().manual_seed(9)
    for shape in ((6, 3), (3, 6)):
        m = torch.randn(*shape, generator=gen, dtype=D64)
        assert nuclear_norm(m).item() == pytest.approx(torch.linalg.svdvals(m).sum().item(), rel=1e-12)
        assert torch.autograd.gradcheck(nuclear_norm, (m.clone().requires_grad_(),))
    # rank deficient: the gradient is U Vᵀ over the non-zero singular values only (norm 1)
    low = torch.randn(6, 2, generator=gen, dtype=D64) @ torch.randn(2, 4, generator=gen, dtype=D64)
    m = low.clone().requires_grad_()
    nuclear_norm(m).backward()
    u, s, vh = torch.linalg.svd(low, full_matrices=False)
    torch.testing.assert_close(m.grad, u[:, :2] @ vh[:2])
    assert torch.linalg.matrix_norm(m.grad, ord=2).item() == pytest.approx(1.0)


@pytest.mark.parametrize("n, dead", [(3, 0), (4, 2), (12, 0), (30, 3)])
def test_w2_to_samples_gradcheck_singular_sample_covariance(n, dead):
    # fewer samples than dimensions, or constant channels: Σ_f is singular, yet W2 is smooth
    # along every perturbation the centring allows and the gradient matches finite differences.
    gen = torch.Generator().manual_seed(10 + n)
    d = 6
    mu, cov = torch.randn(d, generator=gen, dtype=D64), rand_spd(d, gen)
    x = torch.randn(n, d, generator=gen, dtype=D64) + 1
    x[:, :dead] = 0.3
    # A constant channel puts the function on a kink (|t|-like), where the central difference
    # matches the minimum-norm gradient as long as the new singular value, about 0.5·step, stays
    # below nuclear_norm's cut-off (rtol·σ_max ≈ 3e-6 here): hence the small step.
    assert torch.autograd.gradcheck(
        lambda s: gaussian_w2_to_samples(mu, cov, s), (x.requires_grad_(),), eps=1e-8 if dead else 1e-6
    )


def test_w2_to_samples_equals_covariance_form():
    gen = torch.Generator().manual_seed(11)
    d = 5
    mu, cov = torch.randn(d, generator=gen, dtype=D64), rand_spd(d, gen)
    for n in (3, 40):
        x = torch.randn(n, d, generator=gen, dtype=D64)
        w = torch.rand(n, generator=gen, dtype=D64) + 0.1
        for weight in (None, w):
            expected = gaussian_w2(mu, cov, *weighted_mean_cov(x, weight))
            got = gaussian_w2_to_samples(mu, cov, x, weight)
            assert got.item() == pytest.approx(expected.item(), rel=1e-7, abs=1e-9)


def test_covariance_route_gradient_is_wrong_for_singular_samples():
    # Why class_conditional_w2 goes through the samples: in float32, through sqrtm of a singular
    # product, the gradient w.r.t. the samples is swamped by null-space round-off amplified by
    # 1/sqrt(λ); the samples route (in float64, as class_conditional_w2 runs it) is exact.
    gen = torch.Generator().manual_seed(12)
    d = 16
    mu, cov = torch.zeros(d, dtype=D64), rand_spd(d, gen)
    x = torch.randn(4, d, generator=gen) + 0.5
    h = 1e-6
    fd = torch.zeros(4, d, dtype=D64)
    for i in range(4):
        for j in range(d):
            e = torch.zeros(4, d, dtype=D64)
            e[i, j] = h
            plus = gaussian_w2_to_samples(mu, cov, x.double() + e)
            fd[i, j] = (plus - gaussian_w2_to_samples(mu, cov, x.double() - e)).item() / (2 * h)
    naive, ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    gaussian_w2(mu.float(), cov.float(), *weighted_mean_cov(naive)).backward()
    gaussian_w2_to_samples(mu, cov, ours.double()).backward()
    assert (ours.grad.double() - fd).norm() < 1e-4 * fd.norm()
    assert (naive.grad.double() - fd).norm() > 0.1 * fd.norm()


def test_weighted_mean_cov_matches_numpy():
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(20, 3, generator=gen, dtype=D64)
    w = torch.rand(20, generator=gen, dtype=D64)
    mean, cov = weighted_mean_cov(x, w)
    np.testing.assert_allclose(mean.numpy(), np.average(x.numpy(), axis=0, weights=w.numpy()))
    np.testing.assert_allclose(cov.numpy(), np.cov(x.numpy().T, aweights=w.numpy()))
    np.testing.assert_allclose(weighted_mean_cov(x)[1].numpy(), np.cov(x.numpy().T))


# ---------------------------------------------------------------- hypothesis


@st.composite
def gaussian_pairs(draw):
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["spd", "singular", "near_identical"]))
    gen = torch.Generator().manual_seed(seed)
    mu1 = torch.randn(d, generator=gen, dtype=D64)
    c1 = rand_spd(d, gen) if kind != "singular" else rand_spd(d, gen, rank=draw(st.integers(1, d)))
    if kind == "near_identical":
        return mu1, c1, mu1 + 1e-6 * torch.randn(d, generator=gen, dtype=D64), c1 + 1e-8 * torch.eye(d, dtype=D64)
    mu2 = torch.randn(d, generator=gen, dtype=D64)
    c2 = rand_spd(d, gen, scale=draw(st.floats(0.1, 5.0)), rank=None if kind == "spd" else draw(st.integers(1, d)))
    return mu1, c1, mu2, c2


@settings(max_examples=30, deadline=None)
@given(gaussian_pairs())
def test_property_w2_nonnegative_symmetric_finite_and_scipy(pair):
    mu1, c1, mu2, c2 = pair
    leaves = [t.clone().requires_grad_() for t in pair]
    w = gaussian_w2(*leaves)
    w_sym = gaussian_w2(mu2, c2, mu1, c1)
    assert torch.isfinite(w) and w.item() >= 0
    scale = 1 + c1.trace().item() + c2.trace().item()
    assert abs(w.item() - w_sym.item()) <= 1e-6 * scale
    assert abs(w.item() - w2_scipy(*(t.numpy() for t in pair))) <= 1e-6 * scale
    w.backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 9), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_property_w2_to_samples_finite_bounded_gradient(n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    mu, cov = torch.randn(d, generator=gen, dtype=D64), rand_spd(d, gen)
    x = torch.randn(n, d, generator=gen, dtype=D64).requires_grad_()
    w = gaussian_w2_to_samples(mu, cov, x)
    assert torch.isfinite(w) and w.item() >= 0
    w.backward()
    assert torch.isfinite(x.grad).all()
    # ‖∂W2/∂x‖ is bounded by the mean and covariance terms: no 1/sqrt(λ_min) blow-up
    bound = 2 * (x - mu).detach().norm() + 2 * x.detach().norm() + 4 * cov.norm() ** 0.5 + 10
    assert x.grad.norm() <= bound


# ------------------------------------------------------- class_conditional_w2


def make_features(gen, b=2, c=4, size=(8, 8), shift=0.0):
    return torch.randn(b, c, *size, generator=gen) + shift


def test_class_conditional_matches_per_class_sum():
    gen = torch.Generator().manual_seed(20)
    fn, ff = make_features(gen), make_features(gen, shift=0.5).requires_grad_()
    label = torch.randint(0, 3, (2, 1, 8, 8), generator=gen)
    keep = torch.rand(2, 1, 8, 8, generator=gen) > 0.3
    got = class_conditional_w2(fn, ff, label, label, keep_f=keep, eps=0.02, jitter=1e-5)
    expected = 0.0
    rows = lambda f, m: f.movedim(1, -1)[m].double()  # noqa: E731
    for k in range(3):
        mu_n, cov_n = weighted_mean_cov(rows(fn, label[:, 0] == k))
        cov_n = cov_n + 0.02 + 1e-5 * torch.eye(4, dtype=D64)
        expected += gaussian_w2(mu_n, cov_n, *weighted_mean_cov(rows(ff.detach(), (label[:, 0] == k) & keep[:, 0])))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    got.backward()
    assert torch.isfinite(ff.grad).all() and ff.grad.abs().sum() > 0
    # pixels outside keep_f take no part
    assert (ff.grad.movedim(1, -1)[~keep[:, 0]] == 0).all()


def test_class_conditional_zero_for_identical_and_grad_only_into_fuzzy():
    gen = torch.Generator().manual_seed(21)
    f = make_features(gen, c=3)
    label = torch.randint(0, 2, (2, 1, 8, 8), generator=gen)
    fn = f.clone().requires_grad_()
    ff = f.clone().requires_grad_()
    w = class_conditional_w2(fn.detach(), ff, label, label, eps=0.0, jitter=0.0)
    assert w.item() == pytest.approx(0.0, abs=1e-5)
    # with a perturbation the loss is positive and trains only the fuzzy side
    w = class_conditional_w2(fn.detach(), ff * 1.5, label, label, eps=0.0)
    assert w.item() > 0.1
    w.backward()
    assert fn.grad is None and ff.grad.abs().sum() > 0


def test_class_conditional_skips_classes_with_one_pixel():
    gen = torch.Generator().manual_seed(22)
    fn, ff = make_features(gen), make_features(gen).requires_grad_()
    label = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    label[0, 0, 0, 0] = 1  # class 1: one pixel on each side
    both = class_conditional_w2(fn, ff, label, label, eps=0.0)
    only0 = class_conditional_w2(fn, ff, label, label, keep_f=label == 0, weight_n=label == 0, eps=0.0)
    assert torch.isfinite(both) and both.item() == pytest.approx(only0.item(), rel=1e-6)
    both.backward()
    assert torch.isfinite(ff.grad).all()
    assert (ff.grad[0, :, 0, 0] == 0).all()  # the one-pixel class got no gradient


def test_class_conditional_no_class_qualifies():
    gen = torch.Generator().manual_seed(23)
    fn, ff = make_features(gen), make_features(gen).requires_grad_()
    label = torch.randint(0, 2, (2, 1, 8, 8), generator=gen)
    w = class_conditional_w2(fn, ff, label, label, keep_f=torch.zeros_like(label, dtype=torch.bool))
    assert w.item() == 0.0 and w.requires_grad
    w.backward()
    assert (ff.grad == 0).all()
    plain = class_conditional_w2(fn, ff.detach(), label, label, keep_f=torch.zeros_like(label, dtype=torch.bool))
    assert plain.item() == 0.0 and not plain.requires_grad


def test_class_conditional_fewer_pixels_than_channels_float32_gradient():
    # a small lesion class with few clean pixels: singular Σ_f, float32 features; the gradient
    # must agree with a float64 finite difference
    gen = torch.Generator().manual_seed(24)
    fn = make_features(gen, b=1, c=16, size=(6, 6))
    ff = make_features(gen, b=1, c=16, size=(6, 6), shift=0.3)
    label = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    label[..., :2, :3] = 1  # 6 pixels of class 1 in 16 channels
    f = ff.clone().requires_grad_()
    class_conditional_w2(fn, f, label, label, eps=0.01).backward()

    def value(x):
        return class_conditional_w2(fn.double(), x, label, label, eps=0.01).item()

    h = 1e-6
    for idx in ((0, 3, 0, 1), (0, 7, 5, 5)):
        e = torch.zeros_like(ff, dtype=D64)
        e[idx] = h
        fd = (value(ff.double() + e) - value(ff.double() - e)) / (2 * h)
        assert f.grad[idx].item() == pytest.approx(fd, rel=1e-3, abs=1e-5)


def test_class_conditional_weights_eps_draw_and_resampling():
    gen = torch.Generator().manual_seed(25)
    fn, ff = make_features(gen, size=(4, 4)), make_features(gen, size=(4, 4))
    label = torch.randint(0, 2, (2, 1, 8, 8), generator=gen)  # at twice the feature resolution
    small = resample_labels(label, (4, 4))
    assert small.shape == (2, 1, 4, 4) and torch.equal(small, label[..., ::2, ::2])
    a = class_conditional_w2(fn, ff, label, label, eps=0.0)
    assert a.item() == pytest.approx(class_conditional_w2(fn, ff, small, small, eps=0.0).item())
    # 0/1 float weights are the boolean mask; fractional weights change the estimate
    m = torch.rand(2, 1, 4, 4, generator=gen)
    w_bool = class_conditional_w2(fn, ff, small, small, weight_n=m > 0.3, eps=0.0)
    w_float = class_conditional_w2(fn, ff, small, small, weight_n=(m > 0.3).float(), eps=0.0)
    w_soft = class_conditional_w2(fn, ff, small, small, weight_n=m * (m > 0.3), eps=0.0)
    assert w_bool.item() == pytest.approx(w_float.item(), rel=1e-6)
    assert w_soft.item() != pytest.approx(w_bool.item(), rel=1e-6)
    # ε from the generator: reproducible, within [0, eps_max], and it matters
    def draw(seed):
        return class_conditional_w2(fn, ff, small, small, eps_max=1.0, generator=torch.Generator().manual_seed(seed))

    assert draw(1).item() == draw(1).item() and draw(1).item() != draw(2).item()
    eps1 = torch.rand((), generator=torch.Generator().manual_seed(1)).item()
    assert draw(1).item() == pytest.approx(class_conditional_w2(fn, ff, small, small, eps=eps1).item(), rel=1e-6)


def test_class_conditional_num_classes_and_half_precision():
    gen = torch.Generator().manual_seed(26)
    fn, ff = make_features(gen), make_features(gen)
    label = torch.randint(0, 3, (2, 1, 8, 8), generator=gen)
    all_cls = class_conditional_w2(fn, ff, label, label, eps=0.0)
    assert class_conditional_w2(fn, ff, label, label, eps=0.0, num_classes=3).item() == pytest.approx(all_cls.item())
    assert class_conditional_w2(fn, ff, label, label, eps=0.0, num_classes=2).item() < all_cls.item()
    half = class_conditional_w2(fn.bfloat16(), ff.bfloat16(), label, label, eps=0.0)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(all_cls.item(), rel=0.05)


def test_class_indices_forms():
    idx = torch.tensor([[[[0, 1], [2, 1]]]])
    onehot = torch.nn.functional.one_hot(idx[:, 0], 3).movedim(-1, 1).float()
    assert torch.equal(class_indices(onehot), idx)
    assert torch.equal(class_indices(torch.tensor([[[[0.2, 0.7]]]])), torch.tensor([[[[0, 1]]]]))
    with pytest.raises(ValueError, match="label"):
        class_indices(torch.zeros(4, 4))


def test_class_conditional_bad_input():
    f = torch.zeros(1, 4, 4, 4)
    lab = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="min_pixels"):
        class_conditional_w2(f, f, lab, lab, min_pixels=1)
    with pytest.raises(ValueError, match="same C"):
        class_conditional_w2(f, torch.zeros(1, 3, 4, 4), lab, lab)
    with pytest.raises(ValueError, match="label_f"):
        class_conditional_w2(f, f, lab, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="keep_f"):
        class_conditional_w2(f, f, lab, lab, keep_f=torch.ones(1, 2, 4, 4, dtype=torch.bool))
