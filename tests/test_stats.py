"""Tests for rapool_jax.stats (paired AUC / operating-point statistics)."""

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from rapool_jax import metrics
from rapool_jax import stats as st


def _correlated(n_pos, n_neg, seed, rho=0.6, shift_a=1.0, shift_b=0.7, decimals=None):
  """Two correlated binormal scorers on the same images; rounding creates ties."""
  rng = np.random.default_rng(seed)
  labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
  rng.shuffle(labels)
  common = rng.normal(size=labels.size)
  a = labels * shift_a + math.sqrt(rho) * common + math.sqrt(1 - rho) * rng.normal(size=labels.size)
  b = labels * shift_b + math.sqrt(rho) * common + math.sqrt(1 - rho) * rng.normal(size=labels.size)
  if decimals is not None:
    a, b = np.round(a, decimals), np.round(b, decimals)
  return labels, a, b


def _brute_force_delong(labels, scores):
  """O(P Q) DeLong: psi matrix, structural components, ddof=1 covariances."""
  pos, neg = labels == 1, labels == 0
  v10, v01, aucs = [], [], []
  for s in scores:
    x, y = s[pos][:, None], s[neg][None, :]
    psi = (x > y) + 0.5 * (x == y)
    aucs.append(psi.mean())
    v10.append(psi.mean(axis=1))
    v01.append(psi.mean(axis=0))
  v10, v01 = np.array(v10), np.array(v01)
  p, q = v10.shape[1], v01.shape[1]
  s10 = np.array([[np.sum((v10[k] - v10[k].mean()) * (v10[l] - v10[l].mean())) / (p - 1)
                   for l in range(len(scores))] for k in range(len(scores))])
  s01 = np.array([[np.sum((v01[k] - v01[k].mean()) * (v01[l] - v01[l].mean())) / (q - 1)
                   for l in range(len(scores))] for k in range(len(scores))])
  return np.array(aucs), v10, v01, s10 / p + s01 / q


# ---------------------------------------------------------------- ranks, AUC, DeLong


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_fast_delong_components_average_to_sklearn_auc_with_ties(decimals):
  labels, a, b = _correlated(37, 81, seed=3, decimals=decimals)
  v10, v01 = st.delong_components(labels, np.stack([a, b]))
  assert v10.shape == (2, 37) and v01.shape == (2, 81)
  want = [roc_auc_score(labels, a), roc_auc_score(labels, b)]
  np.testing.assert_allclose(v10.mean(axis=1), want, rtol=0, atol=1e-12)
  np.testing.assert_allclose(v01.mean(axis=1), want, rtol=0, atol=1e-12)


def test_fast_delong_covariance_matches_brute_force_with_ties():
  # decimals=0 gives heavy ties, both within and across classes.
  labels, a, b = _correlated(23, 41, seed=7, decimals=0)
  scores = np.stack([a, b])
  assert len(np.unique(a)) < 15  # ties really are there
  ref_auc, ref_v10, ref_v01, ref_cov = _brute_force_delong(labels, scores)
  v10, v01 = st.delong_components(labels, scores)
  np.testing.assert_allclose(v10, ref_v10, atol=1e-12)
  np.testing.assert_allclose(v01, ref_v01, atol=1e-12)
  # The public functions use the same covariance: variances and the paired diff's SE.
  ci = st.auc_ci(labels, a)
  assert ci["se"] == pytest.approx(math.sqrt(ref_cov[0, 0]), rel=1e-10)
  pd = st.paired_delong(labels, a, b)
  var_d = ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1]
  assert ref_cov[0, 1] > 0  # correlated models: covariance matters
  assert pd["se"] == pytest.approx(math.sqrt(var_d), rel=1e-10)
  assert pd["diff"] == pytest.approx(ref_auc[0] - ref_auc[1], abs=1e-12)
  z = (ref_auc[0] - ref_auc[1]) / math.sqrt(var_d)
  assert pd["z"] == pytest.approx(z, rel=1e-10)
  assert pd["p"] == pytest.approx(2 * sps.norm.sf(abs(z)), rel=1e-10)
  assert pd["lo"] == pytest.approx(pd["diff"] - 1.959963984540054 * pd["se"], rel=1e-12)


def test_paired_delong_identical_scores_give_z0_p1():
  labels, a, _ = _correlated(20, 30, seed=1)
  out = st.paired_delong(labels, a, a.copy())
  assert (out["diff"], out["se"], out["z"], out["p"]) == (0.0, 0.0, 0.0, 1.0)
  # Same ranking through a monotone map: also zero variance.
  out = st.paired_delong(labels, a, np.exp(a))
  assert out["se"] == 0.0 and out["p"] == 1.0


def test_auc_ci_is_clipped_to_unit_interval():
  labels = np.r_[np.ones(3, int), np.zeros(4, int)]
  scores = np.array([0.9, 0.8, 0.38, 0.1, 0.2, 0.35, 0.4])  # AUC 11/12, small n
  out = st.auc_ci(labels, scores)
  assert out["auc"] == pytest.approx(11 / 12)
  assert out["auc"] + 1.96 * out["se"] > 1.0  # unclipped bound would exceed 1
  assert out["hi"] == 1.0 and out["lo"] < out["auc"]


# ---------------------------------------------------------------- published example (pROC)

# pROC's aSAH data set (Turck et al. 2010, Intensive Care Med 36:107; 113 patients,
# shipped with the R package pROC). _ASAH_POOR = (outcome == "Poor"), 41 positives;
# wfns is the ordered factor as integers 1..5 (heavy ties). Rows transcribed from a
# copy embedded in a public GitHub test file (found via the code-search index, repo
# not named there); its first six rows agree with head(aSAH) as printed in pROC
# tutorials, and the pROC results it yields below are those printed in pROC's docs:
#   roc.test(aSAH$outcome, aSAH$s100b, aSAH$wfns): Z = -2.209, p-value = 0.02718,
#     AUC of roc1 0.7314, AUC of roc2 0.8237 (DeLong's test, ?roc.test example)
#   ci.auc(aSAH$outcome, aSAH$s100b): 95% CI 0.6301-0.8326 (DeLong) (?ci.auc example)
_ASAH_POOR = [
    0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0,
    1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0,
    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0,
]  # fmt: skip
_ASAH_S100B = [
    0.13, 0.14, 0.1, 0.04, 0.13, 0.1, 0.47, 0.16, 0.18, 0.1, 0.12, 0.1, 0.44, 0.71,
    0.04, 0.08, 0.49, 0.04, 0.07, 0.33, 0.09, 0.09, 0.07, 0.11, 0.07, 0.17, 0.07, 0.11,
    0.13, 0.19, 0.05, 0.16, 0.41, 0.14, 0.34, 0.35, 0.48, 0.09, 0.96, 0.25, 0.5, 0.46,
    0.16, 0.07, 0.43, 0.45, 0.11, 0.08, 0.09, 0.86, 0.52, 0.08, 0.06, 0.13, 2.07, 0.1,
    0.14, 0.15, 0.07, 0.06, 0.77, 0.05, 0.09, 0.3, 0.03, 0.09, 0.04, 0.23, 0.7, 0.09,
    0.27, 0.71, 0.08, 0.26, 0.08, 0.16, 0.09, 0.13, 0.1, 0.08, 0.11, 0.33, 0.11, 0.28,
    0.07, 0.1, 0.32, 0.22, 0.07, 0.05, 0.24, 0.38, 0.1, 0.15, 0.08, 0.14, 0.1, 0.07,
    0.04, 0.19, 0.56, 0.14, 0.58, 0.32, 0.82, 0.74, 0.15, 0.47, 0.17, 0.44, 0.15, 0.5,
    0.48,
]  # fmt: skip
_ASAH_WFNS = [
    1, 1, 1, 1, 3, 2, 5, 4, 1, 2, 5, 2, 5, 5, 1, 2, 5, 2, 2, 5, 2, 1, 1, 1, 1, 2, 1, 2, 1,
    1, 3, 4, 2, 1, 4, 5, 4, 1, 4, 2, 5, 5, 1, 1, 2, 4, 1, 1, 2, 5, 5, 2, 1, 2, 5, 1, 2, 2,
    2, 1, 5, 1, 1, 2, 5, 2, 1, 4, 5, 2, 4, 4, 1, 4, 1, 2, 1, 4, 2, 1, 2, 3, 2, 4, 2, 1, 4,
    5, 1, 1, 5, 4, 2, 2, 1, 1, 1, 3, 1, 2, 5, 2, 2, 5, 5, 5, 2, 4, 4, 5, 1, 1, 1,
]  # fmt: skip


def test_reproduces_proc_roc_test_and_ci_auc_on_asah():
  labels = np.array(_ASAH_POOR)
  s100b, wfns = np.array(_ASAH_S100B), np.array(_ASAH_WFNS, dtype=float)
  assert (labels.size, labels.sum(), s100b.size, wfns.size) == (113, 41, 113, 113)
  out = st.paired_delong(labels, s100b, wfns)
  assert round(out["auc_a"], 4) == 0.7314
  assert round(out["auc_b"], 4) == 0.8237
  assert round(out["z"], 3) == -2.209
  assert round(out["p"], 5) == 0.02718
  ci = st.auc_ci(labels, s100b)
  assert (round(ci["auc"], 4), round(ci["lo"], 4), round(ci["hi"], 4)) == (0.7314, 0.6301, 0.8326)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_agrees_with_delong():
  labels, a, b = _correlated(60, 140, seed=11, decimals=2)
  dl = st.paired_delong(labels, a, b)
  bs = st.paired_bootstrap_auc_diff(labels, a, b, n_resamples=2000, seed=0)
  assert bs["diff"] == pytest.approx(dl["diff"], abs=1e-12)
  assert bs["lo"] < dl["diff"] < bs["hi"]
  ratio = (bs["hi"] - bs["lo"]) / (dl["hi"] - dl["lo"])
  assert 1 / 1.5 < ratio < 1.5, ratio


def test_bootstrap_is_deterministic_given_seed():
  labels, a, b = _correlated(30, 70, seed=5)
  r1 = st.paired_bootstrap_auc_diff(labels, a, b, n_resamples=300, seed=123)
  r2 = st.paired_bootstrap_auc_diff(labels, a, b, n_resamples=300, seed=123)
  r3 = st.paired_bootstrap_auc_diff(labels, a, b, n_resamples=300, seed=124)
  assert r1 == r2
  assert (r1["lo"], r1["hi"]) != (r3["lo"], r3["hi"])


def test_bootstrap_resamples_are_stratified_paired_and_exact(monkeypatch):
  # Two positives in 30: an unstratified resample would often have none.
  labels = np.r_[np.ones(2, int), np.zeros(28, int)]
  rng = np.random.default_rng(2)
  rng.shuffle(labels)
  a = np.round(rng.normal(size=30) + labels, 1)
  b = np.round(rng.normal(size=30) + 0.5 * labels, 1)
  pos, neg = set(np.flatnonzero(labels)), set(np.flatnonzero(labels == 0))
  seen = []
  real = sps.bootstrap

  def spy(data, statistic, **kw):
    def wrapped(pi, ni, axis=-1):
      out = statistic(pi, ni, axis=axis)
      seen.append((np.array(pi), np.array(ni), np.array(out)))
      return out
    return real(data, wrapped, **kw)

  monkeypatch.setattr(st._st, "bootstrap", spy)
  res = st.paired_bootstrap_auc_diff(labels, a, b, n_resamples=200, seed=0)
  assert res["lo"] <= res["hi"]
  pis = np.concatenate([s[0].reshape(-1, 2) for s in seen])
  nis = np.concatenate([s[1].reshape(-1, 28) for s in seen])
  outs = np.concatenate([s[2].reshape(-1) for s in seen])
  assert pis.shape[0] >= 200
  assert set(pis.ravel()) <= pos and set(nis.ravel()) <= neg
  # Each statistic value equals sklearn on the union of resampled images, with both
  # models scored on the same images (paired).
  for pi, ni, out in zip(pis[:50], nis[:50], outs[:50]):
    idx = np.r_[pi, ni].astype(int)
    ref = roc_auc_score(labels[idx], a[idx]) - roc_auc_score(labels[idx], b[idx])
    assert out == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------- fold-stratified


def _folds(n, k, seed):
  return np.random.default_rng(seed).integers(0, k, size=n)


def _brute_force_stratified(labels, a, b, strata):
  """Within-stratum pairs only: diff, and sum_s w_s^2 var_s with w_s = P_s Q_s / sum."""
  num, pairs, var_terms = 0.0, 0, []
  for g in np.unique(strata):
    m = strata == g
    y, sa, sb = labels[m], a[m], b[m]
    psi = lambda s: ((s[y == 1][:, None] > s[y == 0][None, :])  # noqa: E731
                     + 0.5 * (s[y == 1][:, None] == s[y == 0][None, :]))
    num += np.sum(psi(sa) - psi(sb))
    pq = int((y == 1).sum() * (y == 0).sum())
    pairs += pq
    cov = _brute_force_delong(y, np.stack([sa, sb]))[3]
    var_terms.append((pq, cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))
  var = sum((pq / pairs) ** 2 * v for pq, v in var_terms)
  return num / pairs, var


def test_stratified_delong_with_one_stratum_is_paired_delong():
  labels, a, b = _correlated(40, 90, seed=12, decimals=1)
  pooled = st.paired_delong(labels, a, b)
  one = st.stratified_delong(labels, a, b, np.full(labels.size, "all"))
  assert [r["stratum"] for r in one["strata"]] == ["all"]
  assert one["strata"][0]["weight"] == 1.0
  for k, v in pooled.items():
    assert one[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k


def test_stratified_delong_matches_brute_force_with_ties():
  labels, a, b = _correlated(24, 50, seed=13, decimals=0)
  strata = _folds(labels.size, 3, seed=1)
  diff, var = _brute_force_stratified(labels, a, b, strata)
  out = st.stratified_delong(labels, a, b, strata)
  assert out["diff"] == pytest.approx(diff, abs=1e-12)
  assert out["se"] == pytest.approx(math.sqrt(var), rel=1e-10)
  assert out["p"] == pytest.approx(2 * sps.norm.sf(abs(diff) / math.sqrt(var)), rel=1e-9)
  for r in out["strata"]:
    m = strata == r["stratum"]
    ref = roc_auc_score(labels[m], a[m]) - roc_auc_score(labels[m], b[m])
    assert r["diff"] == pytest.approx(ref, abs=1e-12)
    assert (r["n_pos"], r["n_neg"]) == (labels[m].sum(), (labels[m] == 0).sum())
  assert sum(r["weight"] for r in out["strata"]) == pytest.approx(1.0)


def test_stratified_delong_ignores_each_folds_calibration():
  # Fold models that shift their scores differently mix badly in a pooled AUC;
  # the stratified difference only compares images scored by the same model.
  labels, a, b = _correlated(60, 140, seed=14)
  strata = _folds(labels.size, 4, seed=2)
  shifted = a + 3.0 * strata  # a monotone recalibration per fold
  before = st.stratified_delong(labels, a, b, strata)
  after = st.stratified_delong(labels, shifted, b, strata)
  assert after["diff"] == pytest.approx(before["diff"], abs=1e-12)
  assert after["se"] == pytest.approx(before["se"], rel=1e-9)
  assert abs(st.paired_delong(labels, shifted, b)["diff"]
             - st.paired_delong(labels, a, b)["diff"]) > 0.01


def test_stratified_bootstrap_with_one_stratum_is_the_pooled_one():
  labels, a, b = _correlated(30, 70, seed=15)
  pooled = st.paired_bootstrap_auc_diff(labels, a, b, n_resamples=300, seed=7)
  one = st.paired_bootstrap_auc_diff(labels, a, b, n_resamples=300, seed=7,
                                     strata=np.zeros(labels.size, int))
  assert one == pooled


def test_stratified_bootstrap_resamples_within_strata_and_is_exact(monkeypatch):
  labels, a, b = _correlated(15, 30, seed=16, decimals=1)
  strata = _folds(labels.size, 3, seed=3)
  assert min(np.bincount(strata[labels == 1])) >= 2
  groups = [(np.flatnonzero((strata == g) & (labels == 1)),
             np.flatnonzero((strata == g) & (labels == 0))) for g in range(3)]
  seen, real = [], sps.bootstrap

  def spy(data, statistic, **kw):
    assert len(data) == 6  # positives, negatives of each of the 3 strata
    def wrapped(*drawn, axis=-1):
      out = statistic(*drawn, axis=axis)
      seen.append(([np.array(d).reshape(-1, np.shape(d)[-1]) for d in drawn],
                   np.array(out).reshape(-1)))
      return out
    return real(data, wrapped, **kw)

  monkeypatch.setattr(st._st, "bootstrap", spy)
  res = st.paired_bootstrap_auc_diff(labels, a, b, n_resamples=100, seed=0, strata=strata)
  assert res["diff"] == pytest.approx(_brute_force_stratified(labels, a, b, strata)[0])
  drawn, outs = seen[0]
  for k, (pos, neg) in enumerate(groups):
    assert set(drawn[2 * k].ravel()) <= set(pos) and set(drawn[2 * k + 1].ravel()) <= set(neg)
    assert drawn[2 * k].shape[1] == pos.size and drawn[2 * k + 1].shape[1] == neg.size
  for r in range(min(20, outs.size)):
    idx = np.concatenate([d[r] for d in drawn]).astype(int)
    ref = _brute_force_stratified(labels[idx], a[idx], b[idx], strata[idx])[0]
    assert outs[r] == pytest.approx(ref, abs=1e-12)


def test_stratified_bootstrap_ci_agrees_with_stratified_delong():
  labels, a, b = _correlated(80, 220, seed=17, decimals=2)
  strata = _folds(labels.size, 5, seed=4)
  dl = st.stratified_delong(labels, a, b, strata)
  bs = st.paired_bootstrap_auc_diff(labels, a, b, n_resamples=2000, seed=0, strata=strata)
  assert bs["diff"] == pytest.approx(dl["diff"], abs=1e-12)
  assert bs["lo"] < dl["diff"] < bs["hi"]
  ratio = (bs["hi"] - bs["lo"]) / (dl["hi"] - dl["lo"])
  assert 1 / 1.5 < ratio < 1.5, ratio


# ---------------------------------------------------------------- matched specificity


def test_paired_sensitivity_hand_example():
  labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
  a = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.2, 0.3, 0.4, 0.95])
  b = np.array([0.9, 0.3, 0.2, 0.6, 0.1, 0.2, 0.3, 0.6, 0.4])
  # a @ 0.5: positives 1,1,1,0, negatives called positive: 0.95 -> Spe 4/5.
  # b @ 0.45: positives 1,0,0,1, negatives called positive: 0.6 -> Spe 4/5.
  out = st.paired_sensitivity(labels, a, b, 0.5, 0.45)
  assert (out["sens_a"], out["sens_b"], out["spe_a"], out["spe_b"]) == (0.75, 0.5, 0.8, 0.8)
  assert out["matched"] and (out["b"], out["c"]) == (2, 1)
  assert out["p"] == pytest.approx(1.0)  # 2 * P(X >= 2 | n=3) = 1
  # b at 0.35 calls its 0.4 negative too: Spe 3/5, no sensitivity verdict.
  out = st.paired_sensitivity(labels, a, b, 0.5, 0.35)
  assert out["spe_b"] == 0.6 and out["specificity_gap"] == pytest.approx(0.2)
  assert not out["matched"] and out["p"] is None
  # Per-image thresholds (each fold's own) give the same as a constant.
  same = st.paired_sensitivity(labels, a, b, np.full(9, 0.5), np.full(9, 0.45))
  assert same == st.paired_sensitivity(labels, a, b, 0.5, 0.45)


@pytest.mark.parametrize("target", [0.8, 0.884, 0.95])
def test_sensitivity_at_the_threshold_rule_compares_at_the_same_specificity(target):
  labels, a, b = _correlated(50, 200, seed=18, decimals=2)
  ta, tb = (metrics.threshold_at_specificity(labels, s, target) for s in (a, b))
  out = st.paired_sensitivity(labels, a, b, ta, tb)
  pos, neg = labels == 1, labels == 0
  for s, t, sens, spe in ((a, ta, out["sens_a"], out["spe_a"]),
                          (b, tb, out["sens_b"], out["spe_b"])):
    assert spe == np.mean(s[neg] < t) and spe >= target
    # Brute force: the best sensitivity of any threshold reaching the target.
    best = max(np.mean(s[pos] >= c) for c in np.r_[np.unique(s), np.inf]
               if np.mean(s[neg] < c) >= target)
    assert sens == best
  assert out["matched"]  # no ties across the target here
  pa, pb = a[pos] >= ta, b[pos] >= tb
  b_, c_ = int(np.sum(pa & ~pb)), int(np.sum(~pa & pb))
  assert (out["b"], out["c"]) == (b_, c_)
  assert out["p"] == pytest.approx(sps.binomtest(b_, b_ + c_, 0.5).pvalue)


# ---------------------------------------------------------------- McNemar


def test_mcnemar_hand_computation():
  ca = np.array([1, 1, 1, 1, 0, 0, 1, 0], bool)
  cb = np.array([0, 0, 0, 1, 1, 0, 1, 0], bool)
  out = st.mcnemar(ca, cb)
  # b = 3 (a right, b wrong), c = 1; exact two-sided: 2 * P(X >= 3 | n=4) = 2 * 5/16.
  assert (out["b"], out["c"], out["statistic"]) == (3, 1, 1)
  assert out["p"] == pytest.approx(0.625, rel=1e-12)
  # b = 10, c = 2: 2 * (1 + 12 + 66) / 2**12.
  ca = np.r_[np.ones(10, bool), np.zeros(2, bool), np.ones(5, bool)]
  cb = np.r_[np.zeros(10, bool), np.ones(2, bool), np.ones(5, bool)]
  out = st.mcnemar(ca, cb)
  assert (out["b"], out["c"]) == (10, 2)
  assert out["p"] == pytest.approx(2 * 79 / 4096, rel=1e-12)
  # Swapping the classifiers swaps b and c, not p.
  swapped = st.mcnemar(cb, ca)
  assert (swapped["b"], swapped["c"], swapped["p"]) == (2, 10, out["p"])


def test_mcnemar_no_discordant_pairs_gives_p1():
  ca = np.array([1, 0, 1, 1], bool)
  out = st.mcnemar(ca, ca.copy())
  assert (out["b"], out["c"], out["p"]) == (0, 0, 1.0)


def test_mcnemar_matches_statsmodels():
  # statsmodels comes with .[test]: a missing one fails here, never skips.
  from statsmodels.stats import contingency_tables as sm
  rng = np.random.default_rng(4)
  ca, cb = rng.random(80) < 0.7, rng.random(80) < 0.5
  out = st.mcnemar(ca, cb)
  table = [[np.sum(ca & cb), np.sum(ca & ~cb)], [np.sum(~ca & cb), np.sum(~ca & ~cb)]]
  ref = sm.mcnemar(table, exact=True)
  assert out["p"] == pytest.approx(ref.pvalue, rel=1e-10)
  assert out["statistic"] == ref.statistic


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("call, match", [
    (lambda: st.auc_ci([0, 1, 2, 0], [0.1, 0.2, 0.3, 0.4]), "0/1"),
    (lambda: st.auc_ci([1, 1, 1], [0.1, 0.2, 0.3]), "both classes"),
    (lambda: st.auc_ci([0, 1, 1], [0.1, 0.2]), "must match"),
    (lambda: st.auc_ci([0, 1, 1, 0], [0.1, np.inf, 0.3, 0.2]), "finite"),
    (lambda: st.auc_ci(["a", "b"], [0.1, 0.2]), "0/1"),
    (lambda: st.auc_ci([0, 1, 1], [0.1, 0.2, 0.3]), "at least 2"),
    (lambda: st.auc_ci([0, 1, 1, 0], [0.1, 0.2, 0.3, 0.4], alpha=1.0), "alpha"),
    (lambda: st.paired_delong([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3]), "scores_b"),
    (lambda: st.paired_delong([0, 1], [[0.1, 0.2]], [0.1, 0.2]), r"\[N\]"),
    (lambda: st.paired_bootstrap_auc_diff([0, 0, 1], [0.1, 0.2, 0.3], [0.1, 0.2, np.nan]),
     "scores_b"),
    (lambda: st.paired_bootstrap_auc_diff([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4],
                                          [0.1, 0.2, 0.3, 0.5], strata=[0, 0, 1, 1, 1]),
     "strata"),
    (lambda: st.paired_bootstrap_auc_diff([0, 1, 0, 1, 0, 0, 1], np.arange(7.0), np.ones(7),
                                          strata=[0, 0, 0, 0, 1, 1, 1]),
     "stratum 1: the bootstrap needs at least 2 positives and 2 negatives, got 1 and 2"),
    (lambda: st.paired_bootstrap_auc_diff([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4],
                                          [0.1, 0.2, 0.3, 0.5], n_resamples=0), "n_resamples"),
    (lambda: st.stratified_delong([0, 1, 0, 1, 0, 1], np.arange(6.0), np.ones(6),
                                  ["x", "x", "x", "x", "y", "y"]), "stratum 'y': DeLong"),
    (lambda: st.paired_sensitivity([0, 1], [0.1, 0.2], [0.1, 0.2], float("nan"), 0.1), "NaN"),
    (lambda: st.paired_sensitivity([0, 1, 0], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2], 0.1),
     "threshold"),
])
def test_bad_input_raises_value_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()
