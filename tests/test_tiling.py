"""tiling.py: exact encoder tiles (every output voxel owned once, every needed feature kept,
halo = receptive radius + 1), tile caps from a backend's declared encoder limit, chunks."""

from __future__ import annotations

import numpy as np
import pytest

from arssr_rt.errors import BackendError
from arssr_rt.sampling import needed_input_range
from arssr_rt.tiling import axis_cores, cap_tile, output_chunks, plan_tiles


@pytest.mark.parametrize("in_shape,out_shape,tile,radius", [
    ((17, 15, 13), (41, 33, 30), 5, 2),
    ((9, 20, 7), (9, 50, 21), 4, 1),  # x1 on one axis
    ((12, 12, 12), (7, 30, 12), 3, 3),  # down-sampling on one axis
    ((6, 6, 6), (12, 12, 12), 100, 4),  # one tile
])
def test_tiles_own_every_output_voxel_once_and_keep_what_it_needs(in_shape, out_shape, tile, radius):
    owned = np.zeros(out_shape, dtype=np.int32)
    for t in plan_tiles(in_shape, out_shape, tile, radius):
        owned[tuple(slice(a, b) for a, b in t.output)] += 1
        for axis in range(3):
            (e0, e1), (k0, k1), (o0, o1) = t.encode[axis], t.keep[axis], t.output[axis]
            lo, hi = needed_input_range(in_shape[axis], out_shape[axis], o0, o1)
            assert k0 <= lo and hi < k1  # the kept block covers every weighted corner
            halo = radius + 1
            assert e0 == max(0, k0 - halo) and e1 >= min(in_shape[axis], k1 - 1 + halo)
    assert owned.min() == 1 and owned.max() == 1


def test_axis_cores_are_near_equal_and_cover_the_axis():
    cores = axis_cores(23, 5)
    assert cores[0][0] == 0 and cores[-1][1] == 23
    assert all(b == c for (_, b), (c, _) in zip(cores, cores[1:]))
    assert max(b - a for a, b in cores) - min(b - a for a, b in cores) <= 1 and max(b - a for a, b in cores) <= 5


def test_cap_tile_keeps_every_encoder_input_inside_the_declared_limit():
    radius, limit, shape = 2, (10, 40, 10), (30, 30, 8)
    cores = cap_tile(32, shape, radius, limit)
    assert cores == [10 - 2 * 3, 32, 32]  # axis 0 too long: cores of max - 2 halos; the others fit whole
    for t in plan_tiles(shape, (60, 60, 16), cores, radius):
        assert all(b - a <= m for (a, b), m in zip(t.encode, limit))
    assert cap_tile(7, shape, radius, None) == [7, 7, 7]


def test_cap_tile_refuses_a_limit_that_leaves_no_core():
    with pytest.raises(BackendError, match="--tile"):
        cap_tile(32, (30, 30, 30), 2, (6, 64, 64))


@pytest.mark.parametrize("box,chunk", [(((0, 7), (3, 9), (2, 13)), 20), (((0, 4), (0, 4), (0, 4)), 1000), (((5, 6), (0, 50), (0, 50)), 37)])
def test_output_chunks_partition_the_box_within_the_chunk(box, chunk):
    seen = np.zeros([b for _, b in box], dtype=np.int32)
    for start, stop in output_chunks(box, chunk):
        n = int(np.prod([b - a for a, b in zip(start, stop)]))
        assert 0 < n <= max(chunk, box[2][1] - box[2][0])  # at least one line of the last axis
        seen[tuple(slice(a, b) for a, b in zip(start, stop))] += 1
    inside = seen[tuple(slice(a, b) for a, b in box)]
    assert inside.min() == 1 and inside.max() == 1 and seen.sum() == inside.size
