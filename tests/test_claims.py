"""The verdict rules and the claims table built from the stages' tables."""

import json
import math

import pandas as pd
import pytest

from tokenset import claims
from tokenset.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED


def test_directional_verdict_by_the_interval_and_the_runs():
    assert claims.directional_verdict(0.1, 0.5, runs=3) == REPRODUCED
    assert claims.directional_verdict(-0.5, -0.1, runs=3) == NOT_REPRODUCED
    assert claims.directional_verdict(-0.1, 0.5, runs=3) == INCONCLUSIVE
    assert claims.directional_verdict(0.1, 0.5, runs=2) == INCONCLUSIVE  # too few trained runs, whatever the numbers
    assert claims.directional_verdict(0.1, 0.5) == REPRODUCED  # not a comparison of runs (e.g. over images)
    assert claims.directional_verdict(math.nan, math.nan, runs=5) == INCONCLUSIVE


def test_bad_intervals_are_named():
    with pytest.raises(ValueError, match="low 1.0 is above high 0.0"):
        claims.directional_verdict(1.0, 0.0)


def _tables(root, robust_diff=0.05, seeds=3, set_gain=0.05):
    t = root / "tables"
    t.mkdir(parents=True)
    pd.DataFrame([dict(arm=a, seed=s, val_psnr=17.0 + 0.1 * s + (set_gain if a == "set" else 0.0))
                  for a in ("set", "ordered") for s in range(seeds)]).to_csv(t / "tokenizer_runs.csv", index=False)
    orders = ("original", "reversed", "shuffled")
    pd.DataFrame([dict(arm="set", order=o, val_psnr=17.2, changed_pixels=1e-5 if i else 0.0)
                  for i, o in enumerate(orders)]
                 + [dict(arm="ordered", order=o, val_psnr=16.6 - 4 * bool(i), changed_pixels=0.8 * bool(i))
                    for i, o in enumerate(orders)]).to_csv(t / "permutation.csv", index=False)
    (root / "permutation").mkdir()
    random_orders = {arm: dict(images=64, permutations=100, psnr_drop_mean=d, ci_low=d - 0.1, ci_high=d + 0.1)
                     for arm, d in (("set", 0.0), ("ordered", 4.2))}
    (root / "permutation" / "metrics.json").write_text(json.dumps({"spread": {"set": {"max": 1e-6,
                                                                                      "permutations": 100}},
                                                                   "random_permutations": random_orders}))
    level = {"set": 12.0, "ordered": 11.9, "mean": 11.0, "pma": 12.3}  # set beats mean, loses to pma
    pd.DataFrame([dict(arm=a, seed=s, val_psnr=v + 0.1 * s + 0.02 * ((s + i) % 2), steps=600)
                  for i, (a, v) in enumerate(level.items()) for s in range(seeds)]
                 ).to_csv(t / "ablation_runs.csv", index=False)
    pd.DataFrame([dict(snr_db=20.0, measured_snr_db=21.7, set=0.9, ordered=0.8, diff=robust_diff,
                       ci_low=robust_diff - 0.02, ci_high=robust_diff + 0.02, seeds=seeds)]
                 ).to_csv(t / "robustness_seeds.csv", index=False)
    pd.DataFrame([dict(**{"class": "all"}, measure="png_bytes", rho=-0.07, lo=-0.09, hi=-0.05, n=10000),
                  dict(**{"class": "Bag"}, measure="png_bytes", rho=0.2, lo=0.1, hi=0.3, n=1000)]
                 ).to_csv(t / "allocation.csv", index=False)
    pd.DataFrame([dict(M=m, C=c, seed=s, bits_per_image=m * math.log2(c), val_psnr=10 + m / 16 + c / 1024 + s,
                       steps=600)
                  for m in (16, 32, 64) for c in (256, 1024) for s in range(seeds)]
                 ).to_csv(t / "sweep_runs.csv", index=False)
    pd.DataFrame([dict(generator=g, seed=s, fid=200 + 10 * (g == "ar_sorted") + s)
                  for g in ("fsdd", "ar_sorted", "masked_sorted")
                  for s in (0, 1)]).to_csv(t / "gfid_runs.csv", index=False)


def test_collect_judges_every_claim_from_its_table(tmp_path):
    _tables(tmp_path)
    table = claims.collect(tmp_path).set_index("claim")
    assert list(table.columns) == list(claims.COLUMNS[1:])
    assert table.loc["1. Order does not matter", "verdict"] == REPRODUCED
    assert "the ordered control 4.20 dB" in table.loc["1. Order does not matter", "ours"]
    assert "ordered control's loss [4.10, 4.30] dB" in table.loc["1. Order does not matter", "interval"]
    assert table.loc["0. A set reconstructs as well as a sequence", "verdict"] == REPRODUCED  # +0.05 dB, no spread
    assert table.loc["2. Set beats mean", "verdict"] == REPRODUCED  # +1 dB in every seed
    assert table.loc["2. Set beats pma", "verdict"] == NOT_REPRODUCED  # -0.3 dB in every seed
    assert "2. Set beats ordered" not in table.index  # the control is claim 0's, not a decoder of claim 2
    assert "after 600 steps" in table.loc["2. Set beats mean", "ours"]
    assert table.loc["3. More tokens survive noise at 20 dB", "verdict"] == REPRODUCED
    assert table.loc["4. Capacity follows complexity", "verdict"] == NOT_REPRODUCED  # interval below 0
    assert "1 of 1 classes" in table.loc["4. Capacity follows complexity", "ours"]
    assert table.loc["5. More codes reconstruct better", "verdict"] == REPRODUCED  # +0.375 dB a doubling, every seed
    assert table.loc["5. More tokens reconstruct better", "verdict"] == REPRODUCED  # +1.5 dB a doubling
    assert "+0.38 dB per doubling of C" in table.loc["5. More codes reconstruct better", "ours"]
    assert table.loc["6. FSDD beats ar_sorted", "verdict"] == INCONCLUSIVE  # two trained generators each
    assert "ar_sorted minus FSDD +10.0" in table.loc["6. FSDD beats ar_sorted", "ours"]
    assert "2 trained generator(s) each" in table.loc["6. FSDD beats ar_sorted", "evidence"]


def test_robustness_with_too_few_seeds_or_the_wrong_sign(tmp_path):
    _tables(tmp_path / "a", robust_diff=0.05, seeds=2)
    _tables(tmp_path / "b", robust_diff=-0.05, seeds=3)
    verdict = {k: claims.collect(tmp_path / k).set_index("claim").loc["3. More tokens survive noise at 20 dB",
                                                                       "verdict"] for k in "ab"}
    assert verdict == {"a": INCONCLUSIVE, "b": NOT_REPRODUCED}
    ablation = {k: claims.collect(tmp_path / k).set_index("claim").loc["2. Set beats mean", "verdict"] for k in "ab"}
    assert ablation == {"a": INCONCLUSIVE, "b": REPRODUCED}  # 2 seeds per arm: too few runs for a verdict


def test_a_missing_or_malformed_table_is_named(tmp_path):
    _tables(tmp_path)
    (tmp_path / "tables" / "gfid_runs.csv").unlink()
    with pytest.raises(FileNotFoundError, match="gfid_runs.csv: table missing"):
        claims.collect(tmp_path)
    pd.DataFrame(dict(generator=["fsdd"], seed=[0])).to_csv(tmp_path / "tables" / "gfid_runs.csv", index=False)
    with pytest.raises(ValueError, match="expected columns"):
        claims.collect(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tables"):
        claims.collect(tmp_path / "nowhere")


def test_a_set_tokenizer_is_judged_non_inferior(tmp_path):
    claim = "0. A set reconstructs as well as a sequence"
    verdicts = {}
    for name, gain in (("better", 1.0), ("worse", -1.0), ("equal", 0.0)):
        _tables(tmp_path / name, set_gain=gain)
        verdicts[name] = claims.collect(tmp_path / name).set_index("claim").loc[claim, "verdict"]
    assert verdicts == {"better": REPRODUCED, "worse": NOT_REPRODUCED, "equal": REPRODUCED}


@pytest.mark.parametrize("gap, verdict", [(10.0, REPRODUCED), (-10.0, NOT_REPRODUCED), (0.0, INCONCLUSIVE)])
def test_generation_verdict_pairs_three_trained_generators_by_seed(tmp_path, gap, verdict):
    (tmp_path / "tables").mkdir()
    noise = {0: 0.5, 1: -0.3, 2: 0.1}  # seed effects shared by both generators, plus a little of its own
    pd.DataFrame([dict(generator=g, seed=s, fid=100 + noise[s] + (gap if g != "fsdd" else 0.2 * s),
                       class_accuracy=0.5 if g == "fsdd" else 0.7)
                  for g in ("fsdd", "ar_sorted", "masked_sorted") for s in (0, 1, 2)]
                 ).to_csv(tmp_path / "tables" / "gfid_runs.csv", index=False)
    rows = {r["claim"]: r for r in claims.generation_claims(tmp_path)}
    assert rows["6. FSDD beats ar_sorted"]["verdict"] == verdict
    assert rows["6. FSDD beats masked_sorted"]["verdict"] == verdict
    assert "class accuracy 50% vs 70%" in rows["6. FSDD beats ar_sorted"]["ours"]
    assert "3 trained generator(s) each" in rows["6. FSDD beats ar_sorted"]["evidence"]


def test_a_missing_generator_is_named(tmp_path):
    _tables(tmp_path)
    runs = pd.read_csv(tmp_path / "tables" / "gfid_runs.csv")
    runs[runs.generator != "ar_sorted"].to_csv(tmp_path / "tables" / "gfid_runs.csv", index=False)
    with pytest.raises(ValueError, match=r"no rows of generator\(s\) \['ar_sorted'\]"):
        claims.collect(tmp_path)


def test_sweep_verdict_is_the_slope_per_doubling_within_rows(tmp_path):
    # a cross around (32, 512): PSNR rises with C at M = 32 and falls with M at C = 512, with noise between seeds
    cross = [(32, 256), (32, 512), (32, 1024), (16, 512), (64, 512)]

    def write(seeds, tokens_gain):
        t = tmp_path / f"s{seeds}_{tokens_gain}" / "tables"
        t.mkdir(parents=True)
        pd.DataFrame([dict(M=m, C=c, seed=s, val_psnr=17 + 0.2 * math.log2(c / 512)
                           + tokens_gain * math.log2(m / 32) + 0.05 * ((s * 7 + m + c) % 3), steps=1500)
                      for m, c in cross for s in range(seeds)]).to_csv(t / "sweep_runs.csv", index=False)
        return {r["claim"]: r for r in claims.sweep_claim(t.parent)}

    rows = write(3, -0.3)
    codes, tokens = rows["5. More codes reconstruct better"], rows["5. More tokens reconstruct better"]
    assert codes["verdict"] == REPRODUCED and tokens["verdict"] == NOT_REPRODUCED
    assert "Spearman rho with C at M = 32" in codes["ours"] and "Spearman rho with M at C = 512" in tokens["ours"]
    assert write(2, 0.3)["5. More tokens reconstruct better"]["verdict"] == INCONCLUSIVE  # two seeds
    # the slope: dB per doubling, one intercept per row, so a row's offset does not leak into it
    grid = pd.DataFrame(dict(M=[16, 16, 64, 64], C=[256, 1024, 256, 1024], val_psnr=[10.0, 11.0, 20.0, 21.0]))
    assert claims.within_slope(grid, "C", "M") == pytest.approx(0.5)  # +1 dB over two doublings in both rows
    assert math.isnan(claims.within_slope(grid.iloc[[0, 2]], "C", "M"))  # no row varies C
