"""driftwatch's PSI and Jensen-Shannon equal Evidently's on the same bins (the report extra is a test dependency)."""

import numpy as np
import pandas as pd
import pytest
from evidently.legacy.calculations.stattests.jensenshannon import _jensenshannon
from evidently.legacy.calculations.stattests.psi import _psi
from evidently.legacy.core import ColumnType

from driftwatch.monitor.stats import js_distance, psi

rng = np.random.default_rng(7)


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5])
def test_numeric_psi_and_js_on_evidently_bins(shift):
    ref, cur = pd.Series(rng.normal(size=3000)), pd.Series(rng.normal(loc=shift, size=2000))
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")  # what Evidently bins by
    r, c = np.histogram(ref, edges)[0], np.histogram(cur, edges)[0]
    assert psi(r, c) == pytest.approx(_psi(ref, cur, ColumnType.Numerical, 0.1)[0], abs=1e-9)
    assert js_distance(r, c) == pytest.approx(_jensenshannon(ref, cur, ColumnType.Numerical, 0.1)[0], abs=1e-9)


def test_categorical_with_an_empty_category():
    ref = pd.Series(["qa"] * 500 + ["code"] * 300 + ["chat"] * 200)
    cur = pd.Series(["qa"] * 300 + ["code"] * 500 + ["extract"] * 7)
    keys = sorted(set(ref) | set(cur))
    r = [int((ref == k).sum()) for k in keys]
    c = [int((cur == k).sum()) for k in keys]
    assert psi(r, c) == pytest.approx(_psi(ref, cur, ColumnType.Categorical, 0.1)[0], abs=1e-9)
    assert js_distance(r, c) == pytest.approx(_jensenshannon(ref, cur, ColumnType.Categorical, 0.1)[0], abs=1e-9)


def test_tiny_shares_use_evidently_fill_rule():
    r, c = [1_000_000, 50, 0], [999_000, 1000, 5]
    ref = pd.Series(["a"] * r[0] + ["b"] * r[1])
    cur = pd.Series(["a"] * c[0] + ["b"] * c[1] + ["z"] * c[2])
    assert psi(r, c) == pytest.approx(_psi(ref, cur, ColumnType.Categorical, 0.1)[0], rel=1e-9)
