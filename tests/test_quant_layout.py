import pytest

from sagegen.quant_layout import HEAD_DIMS, N_ALIGN, ScaleGroups, k_groups, padded_dim, padded_len, q_groups


@pytest.mark.parametrize("n, padded", [(1, N_ALIGN), (N_ALIGN, N_ALIGN), (N_ALIGN + 1, 2 * N_ALIGN), (0, 0)])
def test_sequences_pad_to_whole_tiles(n, padded):
    assert padded_len(n) == padded


@pytest.mark.parametrize("d, D", [(1, 64), (64, 64), (65, 128), (96, 128), (129, 256), (256, 256)])
def test_head_dim_pads_to_the_next_compiled_one(d, D):
    assert padded_dim(d) == D and D in HEAD_DIMS


def test_head_dim_beyond_the_largest_is_rejected():
    with pytest.raises(ValueError, match="256"):
        padded_dim(257)


@pytest.mark.parametrize("groups", [ScaleGroups(64), ScaleGroups(16, 8), ScaleGroups(64, 4)])
def test_scale_indices_are_dense_and_count_matches(groups):
    n = 3 * N_ALIGN
    used = {groups.index(r) for r in range(n)}
    assert used == set(range(groups.count(n)))


def test_thread_granularity_groups_follow_the_mma_accumulator_rows_and_columns():
    q = q_groups("thread", 64, 16)  # rows r, r+8 of a 16-row warp tile meet in one thread
    assert q.index(3) == q.index(11) != q.index(4)
    k = k_groups("thread", 64)  # key columns 2c, 2c+1 (and the same ones of each 8-column chunk) meet
    assert k.index(2) == k.index(3) == k.index(10) != k.index(4)


def test_per_warp_k_is_per_block_k():
    assert k_groups("warp", 64) == k_groups("block", 64)


@pytest.mark.parametrize("tile, sub", [(0, 1), (12, 1), (256, 1), (64, 2)])
def test_bad_scale_groups_are_rejected(tile, sub):
    with pytest.raises(ValueError):
        ScaleGroups(tile, sub)
