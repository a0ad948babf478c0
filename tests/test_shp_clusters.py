"""Matrices, greedy square clusters, noise, SNR and head label sets on hand-made inputs."""

import json

import numpy as np
import pytest

from analysis.shp.andc import andc_mask
from analysis.shp.clusters import binarize, cluster_index, find_clusters, noise, normalize
from analysis.shp.pipeline import jsonable
from analysis.shp.stats import cluster_stats, label_sets, specialisation


def ones_at(k, cells):
    b = np.zeros((k, k), dtype=np.uint8)
    for i, j in cells:
        b[i, j] = 1
    return b


def block(k, labels):
    return [(i, j) for i in labels for j in labels]


def test_square_blocks_are_found_in_label_order():
    b = ones_at(6, block(6, [0, 2, 3]) + block(6, [4, 5]))
    assert find_clusters(b) == [[0, 2, 3], [4, 5]]
    assert noise(b, find_clusters(b)) == 0
    assert cluster_index(find_clusters(b), 6).tolist() == [0, -1, 0, 0, 1, 1]


@pytest.mark.parametrize("missing", [(2, 1), (1, 2)])
def test_candidate_that_breaks_the_square_starts_its_own_cluster(missing):
    # {0, 1} is a square; 2 is a candidate (diagonal 1) linked to 0 both ways and to 1 one
    # way only: adding 2 would break the square (either direction), so it becomes a singleton.
    links = [(2, 2), (0, 2), (2, 0), (1, 2), (2, 1)]
    b = ones_at(3, block(3, [0, 1]) + [c for c in links if c != missing])
    assert find_clusters(b) == [[0, 1], [2]]
    assert noise(b, find_clusters(b)) == 3  # the three links outside both blocks


def test_greedy_keeps_the_first_candidate_even_when_a_later_pair_is_larger():
    # 0 links only to 1; 1, 2, 3 form a square. Greedy from 0 takes {0, 1}; then {2, 3}.
    b = ones_at(4, block(4, [0, 1]) + block(4, [1, 2, 3]))
    assert find_clusters(b) == [[0, 1], [2, 3]]
    assert noise(b, find_clusters(b)) == 4  # (1,2), (1,3), (2,1), (3,1)


def test_no_cluster_when_the_diagonal_is_empty():
    b = ones_at(4, [(0, 1), (1, 0), (2, 3)])
    assert find_clusters(b) == []
    assert noise(b, []) == 3


def test_singletons_count_as_clusters():
    b = np.eye(5, dtype=np.uint8)
    b[1, 3] = 1
    assert find_clusters(b) == [[0], [1], [2], [3], [4]]
    assert noise(b, find_clusters(b)) == 1


def test_normalise_by_own_max_and_binarise_at_threshold():
    f = np.array([[[2.0, 0.6], [-1.0, 0.59]], [[4.0, 4.0], [1.2, 0.0]]])
    n = normalize(f)
    np.testing.assert_allclose(n[0], [[1.0, 0.3], [-0.5, 0.295]])
    np.testing.assert_allclose(n[1], [[1.0, 1.0], [0.3, 0.0]])
    assert binarize(n, 0.3).tolist() == [[[1, 1], [0, 0]], [[1, 1], [1, 0]]]


@pytest.mark.parametrize("f", [np.zeros((3, 3)), -np.ones((3, 3)), -np.eye(3) - 0.5])
def test_all_zero_and_negative_units_have_no_clusters(f):
    n = normalize(f[None])
    assert (n == 0).all()
    b = binarize(n, 0.3)
    assert b.sum() == 0 and find_clusters(b[0]) == []


def test_threshold_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="threshold"):
        binarize(np.zeros((1, 2, 2)), 0.0)


def test_cluster_stats_exclude_units_without_clusters_and_report_both_ways():
    u0 = ones_at(4, block(4, [0, 1]) + [(2, 2), (0, 3)])  # clusters {0,1},{2}; noise 1
    u1 = ones_at(4, block(4, [3]) + [(0, 1), (1, 0), (2, 1)])  # cluster {3}; noise 3
    u2 = ones_at(4, [(0, 1), (2, 3)])  # no cluster; noise 2
    binary = np.stack([u0, u1, u2])
    clusters = [find_clusters(b) for b in binary]
    s = cluster_stats(binary, clusters)
    assert s["units_with_cluster"] == 2
    assert s["clusters_per_unit"] == pytest.approx(3 / 3)
    assert s["clusters_per_clustered_unit"] == pytest.approx(3 / 2)
    assert s["mean_cluster_size"] == pytest.approx(4 / 3)
    assert s["mean_labels_in_clusters"] == pytest.approx((3 + 1) / 2)
    assert s["mean_area_in_clusters"] == pytest.approx((5 + 1) / 2)
    assert s["mean_noise"] == pytest.approx((1 + 3) / 2)
    assert s["mean_noise_all_units"] == pytest.approx((1 + 3 + 2) / 3)
    assert s["snr_labels"] == pytest.approx(2 / 2)
    assert s["snr_area"] == pytest.approx(3 / 2)
    assert s["noise_free"] is False


def test_snr_is_null_and_block_noise_free_when_there_is_no_noise():
    binary = np.stack([ones_at(3, block(3, [0, 1])), ones_at(3, [(2, 2)]), np.zeros((3, 3))])
    s = cluster_stats(binary, [find_clusters(b) for b in binary])
    assert s["mean_noise"] == 0.0 and s["noise_free"] is True
    assert s["snr_labels"] is None and s["snr_area"] is None
    text = json.dumps(jsonable(s), allow_nan=False)  # must not contain Infinity / NaN
    assert '"snr_labels": null' in text


def test_no_cluster_anywhere_gives_nulls_not_nans():
    binary = np.stack([ones_at(3, [(0, 1)]), np.zeros((3, 3), dtype=np.uint8)])
    s = cluster_stats(binary, [find_clusters(b) for b in binary])
    assert s["units_with_cluster"] == 0
    assert s["mean_noise"] is None and s["snr_labels"] is None and s["noise_free"] is False
    assert s["mean_noise_all_units"] == pytest.approx(0.5)
    json.dumps(jsonable(s), allow_nan=False)


def test_jsonable_turns_non_finite_numbers_into_null():
    out = jsonable({"a": float("nan"), "b": [np.float32(np.inf), np.int64(3)], "c": np.bool_(True)})
    assert out == {"a": None, "b": [None, 3], "c": True}


def test_label_sets_overlaps_coverage_and_heads_per_label():
    b0 = ones_at(5, block(5, [0, 1]) + [(3, 3)])  # diagonal {0,1,3}; clusters {0,1},{3}
    b1 = ones_at(5, [(1, 1), (3, 3), (1, 3)])  # diagonal {1,3}; clusters {1},{3}
    b2 = ones_at(5, [(2, 4)])  # nothing on the diagonal
    binary = np.stack([b0, b1, b2])
    clusters = [find_clusters(b) for b in binary]
    sets = label_sets(binary)
    assert [np.flatnonzero(s).tolist() for s in sets] == [[0, 1, 3], [1, 3], []]
    # every diagonal label lands in a cluster (singletons count): diagonal = cluster labels
    for s, cs in zip(sets, clusters):
        assert sorted(x for c in cs for x in c) == np.flatnonzero(s).tolist()
    spec = specialisation(sets)
    assert spec["label_set_sizes"] == [3, 2, 0]
    assert spec["pairwise_overlap_mean"] == pytest.approx((2 + 0 + 0) / 3)
    assert spec["pairwise_overlap_max"] == 2
    assert spec["pairwise_jaccard_mean"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert spec["coverage"] == pytest.approx(3 / 5)
    assert spec["uncovered_labels"] == [2, 4]
    assert spec["heads_per_label"] == [1, 2, 0, 2, 0]


def test_andc_mask_expands_unit_label_sets_over_their_nodes():
    sets = np.array([[True, False, True], [False, True, False]])  # 2 units, 3 labels
    mask = andc_mask(sets, unit_size=2)  # (K=3, W=4)
    assert mask.tolist() == [
        [True, True, False, False],
        [False, False, True, True],
        [True, True, False, False],
    ]
