"""Tests of lsea_monitor.entropy against the original estimator (entropy-estimators) and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from entropy_estimators import continuous
from hypothesis import given, settings
from hypothesis import strategies as st

from lsea_monitor.entropy import (
    entropy_joint,
    entropy_per_dim,
    knn_entropy,
    latent_entropy,
    reference_entropy_loop,
)
from lsea_monitor.errors import InputValidationError

ORACLE_TOL = 1e-9


def _awkward_block(rng: np.random.Generator, n_samples: int, n_dims: int = 9) -> np.ndarray:
    """A block with ordinary, tied, constant and nearly constant columns (min_dist matters)."""
    x = rng.normal(size=(n_samples, n_dims))
    x[:, 1] = 0.25  # constant: every distance floored
    x[:, 2] = np.round(x[:, 2])  # many exact ties
    x[: n_samples // 2, 3] = x[0, 3]  # half duplicates
    x[:, 4] = 1.0 + 1e-7 * rng.normal(size=n_samples)  # spread below min_dist
    x[:, 5] = 3e-6 * np.arange(n_samples)  # spacing straddles min_dist
    x[:, 6] = 1e4 * x[:, 6]  # large scale
    return x


@pytest.mark.parametrize("n_samples", [3, 4, 5, 6, 7, 10, 16, 32, 64])
def test_matches_entropy_estimators_default_k(n_samples: int) -> None:
    rng = np.random.default_rng(n_samples)
    x = _awkward_block(rng, n_samples)
    k = min(5, n_samples - 1)
    expected_z = [continuous.get_h(x[:, c], k=k, norm="max", min_dist=1e-5) for c in range(x.shape[1])]
    expected_joint = continuous.get_h(x, k=k, norm="max", min_dist=1e-5)
    h_joint, h_z = latent_entropy(x)
    np.testing.assert_allclose(h_z, expected_z, rtol=0, atol=ORACLE_TOL)
    assert abs(float(h_joint) - expected_joint) <= ORACLE_TOL


@pytest.mark.parametrize("n_samples", [2, 3, 8, 13])
def test_matches_entropy_estimators_every_k(n_samples: int) -> None:
    rng = np.random.default_rng(100 + n_samples)
    x = _awkward_block(rng, n_samples)
    for k in range(1, n_samples):
        np.testing.assert_allclose(
            entropy_per_dim(x, k), reference_entropy_loop(x, k), rtol=0, atol=ORACLE_TOL
        )
        expected = continuous.get_h(x, k=k, norm="max", min_dist=1e-5)
        assert abs(float(entropy_joint(x, k)) - expected) <= ORACLE_TOL


def test_min_dist_is_passed_through() -> None:
    rng = np.random.default_rng(3)
    x = _awkward_block(rng, 12)[:, [0, 4, 5, 6]]  # no zero distances: min_dist=0 stays finite
    for min_dist in (0.0, 1e-3):
        expected = [continuous.get_h(x[:, c], k=4, norm="max", min_dist=min_dist) for c in range(4)]
        np.testing.assert_allclose(entropy_per_dim(x, 4, min_dist), expected, atol=ORACLE_TOL)
        expected_j = continuous.get_h(x, k=4, norm="max", min_dist=min_dist)
        assert abs(float(entropy_joint(x, 4, min_dist)) - expected_j) <= ORACLE_TOL


def test_batched_blocks_equal_per_block_oracle() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 3, 10, 6)).astype(np.float32)
    h_joint, h_z = latent_entropy(x)
    assert h_joint.shape == (2, 3) and h_z.shape == (2, 3, 6)
    assert h_joint.dtype == np.float64 and h_z.dtype == np.float64
    for i in range(2):
        for j in range(3):
            block = x[i, j].astype(np.float64)
            np.testing.assert_allclose(h_z[i, j], reference_entropy_loop(block), atol=ORACLE_TOL)
            expected = continuous.get_h(block, k=5, norm="max", min_dist=1e-5)
            assert abs(h_joint[i, j] - expected) <= ORACLE_TOL


def test_single_block_shapes_and_knn_entropy_dispatch() -> None:
    x = np.random.default_rng(0).normal(size=(10, 4))
    assert entropy_per_dim(x).shape == (4,)
    assert entropy_joint(x).shape == ()
    np.testing.assert_array_equal(knn_entropy(x), entropy_per_dim(x))
    np.testing.assert_array_equal(knn_entropy(x, per_dim=False), entropy_joint(x))
    assert reference_entropy_loop(x[None]).shape == (1, 4)


def test_accepts_lists_and_read_only_views() -> None:
    x = np.random.default_rng(1).normal(size=(6, 3))
    view = np.broadcast_to(x, (2, 6, 3))
    assert not view.flags.writeable
    np.testing.assert_array_equal(entropy_per_dim(view)[1], entropy_per_dim(x.tolist()))


def test_torch_equals_numpy_and_keeps_device_and_dtype() -> None:
    x = np.random.default_rng(5).normal(size=(4, 16, 32)).astype(np.float32)
    t = torch.from_numpy(x)
    h_joint_t, h_z_t = latent_entropy(t)
    h_joint, h_z = latent_entropy(x)
    assert isinstance(h_z_t, torch.Tensor) and h_z_t.dtype == torch.float64
    assert h_z_t.device == t.device and h_joint_t.shape == (4,)
    np.testing.assert_array_equal(h_z_t.numpy(), h_z)
    np.testing.assert_array_equal(h_joint_t.numpy(), h_joint)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_equals_cpu() -> None:
    x = torch.randn(3, 32, 256, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    h_joint_gpu, h_z_gpu = latent_entropy(x.cuda())
    assert h_z_gpu.device.type == "cuda" and h_z_gpu.dtype == torch.float64
    h_joint, h_z = latent_entropy(x.numpy())
    np.testing.assert_allclose(h_z_gpu.cpu().numpy(), h_z, atol=1e-12)
    np.testing.assert_allclose(h_joint_gpu.cpu().numpy(), h_joint, atol=1e-12)


# ---------------------------------------------------------------- properties

_block = st.integers(min_value=3, max_value=24).flatmap(
    lambda m: st.lists(
        st.lists(st.integers(-500, 500), min_size=3, max_size=3), min_size=m, max_size=m
    )
)


@settings(max_examples=40, deadline=None)
@given(_block, st.floats(-1e3, 1e3))
def test_translation_invariance(rows: list[list[int]], shift: float) -> None:
    x = 0.01 * np.asarray(rows, dtype=np.float64)
    np.testing.assert_allclose(entropy_per_dim(x + shift), entropy_per_dim(x), atol=1e-6)
    np.testing.assert_allclose(entropy_joint(x + shift), entropy_joint(x), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(_block, st.randoms(use_true_random=False))
def test_sample_permutation_invariance(rows: list[list[int]], random) -> None:
    x = np.asarray(rows, dtype=np.float64) * 0.37
    order = list(range(len(rows)))
    random.shuffle(order)
    np.testing.assert_allclose(entropy_per_dim(x[order]), entropy_per_dim(x), atol=1e-12)
    np.testing.assert_allclose(entropy_joint(x[order]), entropy_joint(x), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(3, 30).flatmap(lambda m: st.sets(st.integers(-10_000, 10_000), min_size=m, max_size=m)),
    st.floats(0.1, 10.0),
    st.sampled_from([-1.0, 1.0]),
)
def test_scaling_adds_log_abs_a(values: set[int], magnitude: float, sign: float) -> None:
    # Distinct values 0.01 apart: every neighbour distance stays above min_dist after scaling.
    x = 0.01 * np.asarray(sorted(values), dtype=np.float64)[:, None]
    a = sign * magnitude
    np.testing.assert_allclose(entropy_per_dim(a * x), entropy_per_dim(x) + math.log(abs(a)), atol=1e-9)
    x2 = np.concatenate([x, x[::-1]], axis=1)  # d = 2: joint entropy gains 2 log|a|
    np.testing.assert_allclose(entropy_joint(a * x2), entropy_joint(x2) + 2 * math.log(abs(a)), atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_random_blocks_match_oracle(n_samples: int, n_dims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=(n_samples, n_dims)), rng.integers(0, 6))
    k = min(5, n_samples - 1)
    np.testing.assert_allclose(entropy_per_dim(x), reference_entropy_loop(x), atol=ORACLE_TOL)
    expected = continuous.get_h(x, k=k, norm="max", min_dist=1e-5)
    assert abs(float(entropy_joint(x)) - expected) <= ORACLE_TOL


def test_constant_column_value() -> None:
    # Every distance floored at min_dist: h = psi(M) - psi(k) + log(2 min_dist).
    from scipy.special import digamma

    h = entropy_per_dim(np.full((8, 1), 3.0), k=3, min_dist=1e-5)
    assert h[0] == pytest.approx(digamma(8) - digamma(3) + math.log(2e-5), abs=1e-12)


@pytest.mark.parametrize("min_dist", [1e-20, 1e-25, 1e-300])
def test_tiny_min_dist_does_not_underflow(min_dist: float) -> None:
    """The CPU path multiplies distances in groups before one log: tiny floors must not underflow."""
    x = np.zeros((20, 2))
    x[:, 1] = np.linspace(0, 1, 20)  # column 0 constant: every distance is min_dist
    expected = [continuous.get_h(x[:, c], k=5, norm="max", min_dist=min_dist) for c in range(2)]
    np.testing.assert_allclose(entropy_per_dim(x, min_dist=min_dist), expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(entropy_per_dim(torch.from_numpy(x), min_dist=min_dist).numpy(), expected,
                               rtol=1e-12, atol=0)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("shape", "k", "match"),
    [
        ((5,), None, r"at least 2 dimensions.*\(M, 1\)"),
        ((1, 4), None, r"at least M=2 .* got M=1"),
        ((4, 0), None, r"C=0"),
        ((4, 3), 4, r"1 <= k < M, got k=4 with M=4"),
        ((4, 3), 0, r"1 <= k < M, got k=0"),
        ((4, 3), 2.5, r"k must be an integer"),
        ((4, 3), True, r"k must be an integer"),
    ],
)
def test_bad_shapes_and_k_raise(shape: tuple[int, ...], k: object, match: str) -> None:
    x = np.zeros(shape)
    with pytest.raises(InputValidationError, match=match):
        entropy_per_dim(x, k)  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match=match):
        entropy_joint(torch.from_numpy(x), k)  # type: ignore[arg-type]


def test_non_finite_values_are_counted() -> None:
    x = np.ones((6, 4))
    x[0, 0] = np.nan
    x[2, 3] = np.inf
    with pytest.raises(InputValidationError, match=r"2 non-finite value\(s\) .* out of 24"):
        latent_entropy(x)
    with pytest.raises(InputValidationError, match="non-finite"):
        entropy_per_dim(torch.from_numpy(x))


@pytest.mark.parametrize("min_dist", [-1.0, float("nan"), "x"])
def test_bad_min_dist_raises(min_dist: object) -> None:
    with pytest.raises(InputValidationError, match="min_dist"):
        entropy_per_dim(np.ones((4, 2)), None, min_dist)  # type: ignore[arg-type]


def test_non_numeric_input_raises() -> None:
    with pytest.raises(InputValidationError, match="could not convert"):
        entropy_per_dim([["a", "b"], ["c", "d"]])


def test_device_path_equals_cpu_path_on_cpu() -> None:
    """The torch window implementation (used on GPUs) equals the numpy one (used on the CPU)."""
    from lsea_monitor.entropy import _entropy_per_dim_cpu, _kl_sum, _kth_neighbour_1d

    rng = np.random.default_rng(3)
    for m in (3, 6, 10, 32, 64):
        x = np.round(rng.normal(size=(2, m, 40)), 2)  # rounding makes ties
        k = min(5, m - 1)
        device_path = _kl_sum(_kth_neighbour_1d(torch.from_numpy(x), k), m, 1, k, 1e-5).numpy()
        np.testing.assert_allclose(_entropy_per_dim_cpu(x, k, 1e-5), device_path, rtol=0, atol=1e-12)
