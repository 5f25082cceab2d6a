import pytest
import torch

from sagegen.quant_layout import (HEAD_DIMS, N_ALIGN, ScaleGroups, k_groups, padded_dim, padded_len, q_groups,
                                  qk_from_image, qk_image_offset, qk_to_image, v_f16_from_image,
                                  v_f16_to_image, v_from_image, v_key_position, v_to_image)


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


def test_every_accepted_scale_group_indexes_by_shifts():
    """The quantization kernel computes ScaleGroups.index with shifts (templates/quant/quant.cuh, ScaleShifts): every
    tile and sub the class accepts must be a power of two, and the shift form must give the same index."""
    accepted = 0
    for tile in range(1, 2 * N_ALIGN + 1):
        for sub in range(1, 9):
            try:
                g = ScaleGroups(tile, sub)
            except ValueError:
                continue
            accepted += 1
            lt, ls = tile.bit_length() - 1, sub.bit_length() - 1
            assert tile == 1 << lt and sub == 1 << ls
            assert all(g.index(r) == ((r >> lt) << ls) + ((r & 7) >> (3 - ls)) for r in range(2 * N_ALIGN))
    assert accepted == 5 * 3  # tiles 8..128, subs 1, 4, 8


# --- operand images ----------------------------------------------------------------------------------------------
def test_v_key_position_swaps_the_a_and_t_bits_of_a_key():
    assert [v_key_position(k) for k in (0, 1, 2, 8, 9, 31, 127)] == [0, 1, 4, 2, 3, 31, 127]
    assert v_key_position(32 + 16 + 8 + 2 * 3 + 1) == 32 + 16 + 4 * 3 + 2 + 1


def test_v_key_position_permutes_a_block_and_takes_tensors():
    pos = v_key_position(torch.arange(128))
    assert sorted(pos.tolist()) == list(range(128))
    assert pos.tolist() == [v_key_position(k) for k in range(128)]
    # a thread's P fragment (keys 2t+e and 8+2t+e of each 16, here t = 1) lands on 4 consecutive bytes
    assert [v_key_position(k) for k in (2, 3, 10, 11)] == [4, 5, 6, 7]


@pytest.mark.parametrize("D, row, chunk, stored", [(128, 3, 1, 2), (128, 0, 5, 5), (128, 9, 0, 1), (128, 15, 7, 0),
                                                    (64, 3, 1, 0), (64, 2, 0, 1), (64, 7, 2, 1), (64, 9, 3, 3)])
def test_qk_image_moves_chunk_c_of_row_r_to_the_swizzled_position(D, row, chunk, stored):
    assert qk_image_offset(row, 16 * chunk + 5, D) == row * D + 16 * stored + 5
    x = torch.zeros(2, 16, D, dtype=torch.int8)
    x[1, row, 16 * chunk:16 * chunk + 16] = torch.arange(1, 17, dtype=torch.int8)  # bytes keep their order
    img = qk_to_image(x)
    assert torch.equal(img[1, row, 16 * stored:16 * stored + 16], x[1, row, 16 * chunk:16 * chunk + 16])
    assert int(img.count_nonzero()) == 16


@pytest.mark.parametrize("row, col, offset", [
    (0, 0, 0), (0, 127, 127), (0, 128, 1024),  # row 0, second channel half: the next 1024-byte atom
    (1, 0, 128 + 16), (1, 16, 128), (3, 130, 1024 + 3 * 128 + 3 * 16 + 2),
    (8, 0, 2048), (9, 255, 2048 + 1024 + 128 + 6 * 16 + 15),  # the next 8-row group: 8 rows x 256 bytes on
])
def test_qk_image_at_d256_keeps_each_channel_half_in_its_own_swizzle_atom(row, col, offset):
    assert qk_image_offset(row, col, 256) == offset
    x = torch.zeros(16, 256, dtype=torch.int8)
    x[row, col] = 7
    assert int(qk_to_image(x).flatten().nonzero()) == offset


@pytest.mark.parametrize("D", [64, 128, 256])
def test_qk_image_round_trips_and_is_a_permutation(D):
    x = torch.randint(-127, 128, (2, 3, 256, D), dtype=torch.int8, generator=torch.Generator().manual_seed(D))
    img = qk_to_image(x)
    assert img.shape == x.shape and img.dtype == x.dtype and not torch.equal(img, x)
    assert torch.equal(img.flatten(-2).sort(dim=-1).values, x.flatten(-2).sort(dim=-1).values)
    assert torch.equal(qk_from_image(img), x)
    assert torch.equal(img[..., 0, :16], x[..., 0, :16])  # row 0's first chunk is never swizzled
    offsets = qk_image_offset(torch.arange(256)[:, None], torch.arange(D), D)
    assert torch.equal(offsets.flatten().sort().values, torch.arange(256 * D))


@pytest.mark.parametrize("shape, match", [((128, 96), "head dim"), ((128, 32), "head dim"), ((12, 128), "8-row")])
def test_qk_image_needs_a_wgmma_head_dim_and_whole_row_groups(shape, match):
    with pytest.raises(ValueError, match=match):
        qk_to_image(torch.zeros(*shape, dtype=torch.int8))


def test_v_image_places_key_k_of_channel_c_by_position_then_chunk_swizzle():
    D, n_pad = 64, 256
    vt = torch.arange(D * n_pad, dtype=torch.int32).view(D, n_pad)  # element = c * n_pad + key: traceable
    img = v_to_image(vt)
    assert img.shape == (2, D, 128)
    for j, c, k in [(0, 0, 0), (0, 3, 2), (1, 3, 8), (1, 10, 9), (0, 63, 31), (1, 7, 127)]:
        pos = v_key_position(k)
        assert img[j, c, ((pos // 16) ^ (c % 8)) * 16 + pos % 16] == c * n_pad + 128 * j + k
    assert int(img[0, 3, (0 ^ 3) * 16 + 4]) == 3 * n_pad + 2  # key 2 -> byte 4, chunk 0 -> chunk 3


@pytest.mark.parametrize("D", [64, 128, 256])
def test_v_image_round_trips_fp8_bytes(D):
    vt = torch.randn(2, 3, D, 384, generator=torch.Generator().manual_seed(D)).to(torch.float8_e4m3fn)
    img = v_to_image(vt)
    assert img.shape == (2, 3, 3, D, 128) and img.dtype == torch.float8_e4m3fn
    back = v_from_image(img)
    assert back.shape == vt.shape and torch.equal(back.view(torch.uint8), vt.view(torch.uint8))


@pytest.mark.parametrize("D", [64, 128, 256])
def test_v_image_of_int8_is_the_fp8_image_of_the_same_bytes(D):
    """v mode i8w: 8-bit V (int8 values stored + 128) in the e4m3 image's byte layout; the image functions move such
    bytes as they move e4m3."""
    vt = torch.randint(-127, 128, (2, 3, D, 384), generator=torch.Generator().manual_seed(D), dtype=torch.int8)
    img = v_to_image(vt)
    assert img.shape == (2, 3, 3, D, 128) and img.dtype == torch.int8
    assert torch.equal(img.view(torch.uint8), v_to_image(vt.view(torch.float8_e4m3fn)).view(torch.uint8))
    assert torch.equal(v_from_image(img), vt)


def test_v_image_needs_whole_key_blocks():
    with pytest.raises(ValueError, match="128"):
        v_to_image(torch.zeros(64, 100, dtype=torch.uint8))
    with pytest.raises(ValueError, match="128"):
        v_from_image(torch.zeros(1, 64, 64, dtype=torch.uint8))


def test_v_f16_image_places_key_r_channel_c_in_its_slab_by_chunk_swizzle():
    n_pad, D = 256, 128
    v = torch.arange(n_pad * D, dtype=torch.int32).view(n_pad, D)  # element = key * D + c: traceable
    img = v_f16_to_image(v)
    assert img.shape == (2, 2, 128, 64)  # [key block, 64-channel slab, key, channel in slab]
    for r, c in [(0, 0), (1, 8), (9, 70), (130, 127), (255, 64), (7, 63)]:
        j, key, slab, ch = r // 128, r % 128, c // 64, c % 64
        assert img[j, slab, key, ((ch // 8) ^ (key % 8)) * 8 + ch % 8] == r * D + c
    assert torch.equal(img[0, 0, 0], v[0, :64])  # key row 0 is never swizzled


@pytest.mark.parametrize("D", [64, 128, 256])
def test_v_f16_image_round_trips(D):
    v = torch.randn(2, 3, 384, D, generator=torch.Generator().manual_seed(D)).half()
    img = v_f16_to_image(v)
    assert img.shape == (2, 3, 3, D // 64, 128, 64) and img.dtype == torch.float16
    assert torch.equal(v_f16_from_image(img), v)


def test_v_f16_image_needs_whole_key_blocks_and_slabs():
    with pytest.raises(ValueError, match="128"):
        v_f16_to_image(torch.zeros(100, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match="64"):
        v_f16_to_image(torch.zeros(128, 72, dtype=torch.float16))
    with pytest.raises(ValueError, match="last dims"):
        v_f16_from_image(torch.zeros(1, 1, 64, 64, dtype=torch.float16))
