"""The statistics against scipy on the same bins (scipy is a test dependency only)."""

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from driftwatch.monitor.stats import (ZERO_FLOOR, binned_ks, chi2_sf, chi2_two_sample, js_distance, mmd_test,
                                      semantic_verdict,
                                      kolmogorov_sf, psi, verdict)

rng = np.random.default_rng(0)


def counts_pair(k=10, n=5000, m=3000, shift=0.0):
    edges = np.quantile(rng.normal(size=20000), np.linspace(0, 1, k + 1)[1:-1])
    a = np.bincount(np.searchsorted(edges, rng.normal(size=n)), minlength=k)
    b = np.bincount(np.searchsorted(edges, rng.normal(loc=shift, size=m)), minlength=k)
    return a, b


def test_psi_matches_the_textbook_formula_with_evidently_zero_floor():
    a, b = np.array([50, 30, 20, 0]), np.array([40, 30, 25, 5])
    p, q = a / a.sum(), b / b.sum()
    p = np.where(p == 0, ZERO_FLOOR, p)
    assert psi(a, b) == pytest.approx(float(np.sum((p - q) * np.log(p / q))), abs=1e-12)
    assert psi(a, a) == 0.0


@pytest.mark.parametrize("shift", [0.0, 0.2, 1.0])
def test_js_distance_equals_scipy(shift):
    a, b = counts_pair(shift=shift)
    assert js_distance(a, b) == pytest.approx(jensenshannon(a / a.sum(), b / b.sum()), abs=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.3])
def test_binned_ks_equals_scipy_on_binned_values(shift):
    a, b = counts_pair(shift=shift)
    # the same samples expressed as bin indices: scipy's exact two-sample KS on those values
    xa, xb = np.repeat(np.arange(a.size), a), np.repeat(np.arange(b.size), b)
    d, p = binned_ks(a, b)
    ref = sps.ks_2samp(xa, xb, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    ne = a.sum() * b.sum() / (a.sum() + b.sum())
    assert p == pytest.approx(sps.kstwobign.sf(np.sqrt(ne) * d), abs=1e-9)


@pytest.mark.parametrize("x", [0.05, 0.3, 0.5, 0.8, 0.99, 1.0, 1.36, 2.0, 3.5])
def test_kolmogorov_tail(x):
    assert kolmogorov_sf(x) == pytest.approx(sps.kstwobign.sf(x), abs=1e-12)


@pytest.mark.parametrize("x, dof", [(0.5, 1), (3.84, 1), (10, 4), (50, 30), (200, 150), (1e-3, 7), (900, 9)])
def test_chi2_tail(x, dof):
    assert chi2_sf(x, dof) == pytest.approx(sps.chi2.sf(x, dof), rel=1e-9, abs=1e-300)


def test_two_sample_chi2_equals_scipy_contingency():
    a, b = np.array([120, 80, 40, 0, 10]), np.array([100, 95, 30, 0, 25])
    stat, dof, p, v = chi2_two_sample(a, b)
    keep = (a + b) > 0
    ref = sps.chi2_contingency(np.vstack([a[keep], b[keep]]), correction=False)
    assert (stat, dof) == (pytest.approx(ref.statistic, rel=1e-12), ref.dof)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    assert v == pytest.approx(sps.contingency.association(np.vstack([a[keep], b[keep]]), method="cramer"), rel=1e-9)


def test_two_sample_chi2_is_calibrated_on_stationary_data():
    # the reason it exists: with a small reference the one-sample test (reference as exact) fires ~50 % of the time
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    fired = sum(chi2_two_sample(rng.multinomial(300, probs), rng.multinomial(5000, probs))[2] < 0.05 for _ in range(1000))
    assert 25 <= fired <= 80  # ≈ 5 %


def test_verdict_needs_data_significance_and_effect():
    a, b = counts_pair(n=100, m=100, shift=2.0)
    small = verdict(a, b, kind="numeric", min_samples=200)
    assert not small.drifted and "insufficient data" in small.reason and small.value is None
    a, b = counts_pair(n=200_000, m=200_000, shift=0.03)
    tiny = verdict(a, b, kind="numeric")
    assert not tiny.drifted and "small" in tiny.reason  # significant at this size, but PSI far below 0.1
    a, b = counts_pair(n=5000, m=5000, shift=0.5)
    big = verdict(a, b, kind="numeric")
    assert big.drifted and big.value >= 0.1 and big.p_value < 0.01 and "PSI" in big.reason
    same = verdict(*counts_pair(n=5000, m=5000), kind="numeric")
    assert not same.drifted
    cat = verdict([500, 300, 200], [200, 300, 500], kind="categorical")
    assert cat.drifted and "Cramér" in cat.reason


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        js_distance([1, -2], [1, 2])
    with pytest.raises(ValueError, match="no observations"):
        binned_ks([0, 0], [1, 2])


def _mmd2_direct(x, y):
    """Unbiased MMD² written out pair by pair, the textbook way (Gretton et al. 2012, eq. 3)."""
    z = np.vstack([x, y])
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    k = np.exp(-d2 / np.median(d2[np.triu_indices(len(z), 1)]))
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_mmd_equals_the_direct_formula_and_detects_a_shift():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, 8)), rng.normal(size=(45, 8)) + 0.6
    value, p = mmd_test(x, y, permutations=199)
    assert value == pytest.approx(_mmd2_direct(x, y), abs=1e-12)
    assert p == pytest.approx(1 / 200)  # no permutation reaches the observed split


def test_mmd_permutation_test_is_calibrated_on_stationary_data():
    rng = np.random.default_rng(4)
    hits = sum(mmd_test(rng.normal(size=(40, 5)), rng.normal(size=(40, 5)), permutations=99, seed=i)[1] < 0.05
               for i in range(200))
    assert 2 <= hits <= 22  # ≈ 5 % of 200 (binomial 99.9 % range)


def test_semantic_verdict_needs_data_significance_and_effect():
    rng = np.random.default_rng(5)
    ref, far = rng.normal(size=(80, 4)), rng.normal(size=(80, 4)) + 1.0
    assert semantic_verdict(ref, far[:10], min_samples=50).reason.startswith("insufficient data")
    drifted = semantic_verdict(ref, far, floor=0.01)
    assert drifted.drifted and drifted.test == "mmd" and "MMD²" in drifted.reason
    assert not semantic_verdict(ref, far, floor=10.0).drifted  # significant but below the floor
