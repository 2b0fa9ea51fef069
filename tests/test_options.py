"""One parser for the size options (--scale / --voxel-size / --shape) and the run options
(--max-memory, --tile): strict number syntax, the same grid in upsample, info and batch, and
one-line refusals (no traceback, no `internal error`, nothing written) for absurd requests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import listing

from arssr_rt.cli import main
from arssr_rt.errors import InputError
from arssr_rt.geometry import MAX_SCALE, MIN_SCALE, plan_output_grid
from arssr_rt.nifti_io import load_volume
from arssr_rt.options import (
    MIN_TILE,
    check_tile,
    output_grid,
    parse_max_memory,
    parse_shape,
    parse_size_options,
    parse_triplet,
)


@pytest.fixture(scope="module")
def colin(fixture_path):
    return load_volume(fixture_path)


def one_line_error(capsys, code: int, pattern: str) -> str:
    err = capsys.readouterr().err
    assert code not in (0, 70), err  # 70 is the CLI's "internal error"
    assert "Traceback" not in err and "internal error" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arssr-rt: error:"), err
    assert pattern in lines[0], lines[0]
    return lines[0]


# ----- parse_triplet / parse_shape ---------------------------------------------------------------


def test_parse_triplet_values():
    assert parse_triplet("2.5", "--scale") == (2.5, 2.5, 2.5)
    assert parse_triplet("1,1,3", "--scale") == (1.0, 1.0, 3.0)
    assert parse_triplet("2x2x3", "--scale") == (2.0, 2.0, 3.0)
    assert parse_triplet(" 1e-1 ", "--voxel-size") == (0.1, 0.1, 0.1)
    assert parse_triplet(2, "--scale") == (2.0, 2.0, 2.0)
    assert parse_triplet([0.5, 0.7, 1], "--voxel-size") == (0.5, 0.7, 1.0)
    assert parse_triplet(np.array([2.0, 2.0, 3.0]), "--scale") == (2.0, 2.0, 3.0)


@pytest.mark.parametrize("text", [
    "0", "-1", "nan", "inf", "-inf", "NaN", "infinity", "1_0", "1_000", "0x10", "a,b", "1,2", "1,2,3,4",
    "2,0,2", "", "x", "2,,3,3", "2,2,3,", "\u0662", "2 5", "1e", "1e400",
])
def test_parse_triplet_refuses(text):
    """float() takes '1_0' (= 10), 'nan', 'inf' and Arabic-Indic digits: none is a size."""
    with pytest.raises(InputError) as info:
        parse_triplet(text, "--scale")
    assert "--scale" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [0.0, -2.0, math.nan, math.inf, True, ("2", "2", "2"), None, b"2"])
def test_parse_triplet_refuses_numbers(value):
    with pytest.raises(InputError):
        parse_triplet(value, "--scale")


def test_parse_shape_takes_whole_numbers_only():
    assert parse_shape("48") == (48, 48, 48)
    assert parse_shape("10,20,30") == (10, 20, 30)
    assert parse_shape((10, 20.0, 30)) == (10, 20, 30)
    for bad in ("48.9", "10.7,20,30", "48.0", "1e2", "-4", "0", "4_8", (10.5, 20, 30), (0, 20, 30)):
        with pytest.raises(InputError, match="--shape"):
            parse_shape(bad)


def test_exactly_one_size_option():
    with pytest.raises(InputError, match="exactly one"):
        parse_size_options()
    with pytest.raises(InputError, match="exactly one"):
        parse_size_options(scale="2", shape="10")
    assert parse_size_options(voxel_size="0.5").voxel_size == (0.5, 0.5, 0.5)


# ----- the planned grid: bounds checked before any rounding or numpy ----------------------------


@pytest.mark.parametrize("kwargs,pattern", [
    ({"scale": "1e-9"}, "--scale"),          # used to write a 1x1x1 image with exit 0
    ({"scale": "1e300"}, "--scale"),         # used to be OverflowError -> internal error
    ({"scale": "33"}, "--scale"),
    ({"scale": "0.05"}, "--scale"),
    ({"voxel_size": "1e-12"}, "--voxel-size"),   # used to plan 6.4e13^3 voxels (int64 overflow)
    ({"voxel_size": "1e-320"}, "--voxel-size"),  # sp / v is inf: used to be OverflowError
    ({"voxel_size": "1e300"}, "--voxel-size"),
    ({"shape": "1,64,64"}, "--shape"),
    ({"shape": "3000,64,64"}, "--shape"),
])
def test_absurd_requests_are_refused_in_one_line(colin, kwargs, pattern):
    with pytest.raises(InputError, match=pattern) as info:
        output_grid(colin.shape, colin.affine, **kwargs)
    assert "\n" not in str(info.value)


def test_output_axis_needs_two_voxels():
    """In range per axis but an axis of 1 voxel: 8 * 0.0625 = 0.5 rounds to 0 -> 1."""
    with pytest.raises(InputError, match="at least 2 voxels"):
        plan_output_grid((8, 64, 64), np.eye(4), scale=(0.1, 1.0, 1.0))
    grid = plan_output_grid((32, 64, 64), np.eye(4), scale=(MIN_SCALE, 1.0, 1.0))
    assert grid.shape == (2, 64, 64)


def test_bounds_are_inclusive_and_voxels_are_python_ints(colin):
    grid = plan_output_grid((4, 4, 4), np.eye(4), scale=(MAX_SCALE,) * 3)
    assert grid.shape == (128, 128, 128) and grid.voxels == 128**3 and isinstance(grid.voxels, int)
    big = plan_output_grid((512, 512, 512), np.eye(4), scale=(MAX_SCALE,) * 3)
    assert big.voxels == (512 * 32) ** 3  # 4.4e12: exact, no int64 wrap


def test_same_shape_text_gives_the_same_grid_everywhere(colin, fixture_path, capsys, tmp_path):
    """upsample (pipeline.plan_grid), info and batch parse through one function."""
    from arssr_rt.commands.info import describe_volume
    from arssr_rt.pipeline import plan_grid

    text = "40,50,60"
    via_pipeline = plan_grid(colin, shape=text)
    via_info = describe_volume(fixture_path, None, None, text, None)["output"]["shape"]
    assert list(via_pipeline.shape) == via_info == [40, 50, 60]
    for bad in ("10.7,20,30", "48.9"):  # used to be 10 in upsample and 11 in info
        with pytest.raises(InputError, match="whole numbers"):
            plan_grid(colin, shape=bad)
        with pytest.raises(InputError, match="whole numbers"):
            describe_volume(fixture_path, None, None, bad, None)


# ----- the CLI: every command that takes size options, nothing written -------------------------


@pytest.mark.parametrize("args,pattern", [
    (["--scale", "1e-9"], "--scale"),
    (["--scale", "1_0"], "--scale"),
    (["--scale", "nan"], "--scale"),
    (["--voxel-size", "1e-12"], "--voxel-size"),
    (["--shape", "48.9"], "--shape"),
    (["--scale", "2", "--max-memory", "nan"], "--max-memory"),
    (["--scale", "2", "--max-memory", "inf"], "--max-memory"),
    (["--scale", "2", "--max-memory", "-1"], "--max-memory"),
    (["--scale", "2", "--max-memory", "abc"], "--max-memory"),
    (["--scale", "2", "--max-memory", "1e300"], "--max-memory"),
    (["--scale", "2", "--max-memory", "0.01"], "--max-memory"),
    (["--scale", "2", "--tile", "1"], "--tile"),
    (["--scale", "2", "--tile", "abc"], "--tile"),
])
def test_upsample_refuses_bad_options_in_one_line(args, pattern, fixture_path, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    code = main(["upsample", str(fixture_path), "-o", str(out / "r.nii.gz"), "--quiet", *args])
    one_line_error(capsys, code, pattern)
    assert listing(out) == []


@pytest.mark.parametrize("args,pattern", [
    (["--shape", "10.7,20,30"], "--shape"),
    (["--scale", "1e-9"], "--scale"),
    (["--voxel-size", "1e-12"], "--voxel-size"),
    (["--scale", "1e300"], "--scale"),
])
def test_info_refuses_what_upsample_refuses(args, pattern, fixture_path, capsys):
    one_line_error(capsys, main(["info", str(fixture_path), *args]), pattern)


@pytest.mark.parametrize("args,pattern", [
    (["--scale", "1_0"], "--scale"), (["--shape", "48.9"], "--shape"), (["--scale", "2", "--tile", "2"], "--tile"),
])
def test_batch_refuses_bad_options_once_before_any_work(args, pattern, fixture_path, tmp_path, capsys):
    out = tmp_path / "sr"
    code = main(["batch", str(fixture_path), "-o", str(out), "--quiet", *args])
    one_line_error(capsys, code, pattern)
    assert not out.exists()  # refused before the output folder or a report is made


def test_info_json_for_valid_options_still_works(fixture_path, capsys):
    assert main(["info", str(fixture_path), "--shape", "48", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["output"]["shape"] == [48, 48, 48]


# ----- --max-memory and --tile -------------------------------------------------------------------


def test_max_memory_parses_plain_gib():
    assert parse_max_memory("2") == 2 * 2**30
    assert parse_max_memory("0.5") == 2**29
    assert parse_max_memory(1.5) == 3 * 2**29


def test_tile_minimum():
    check_tile(None)
    check_tile(MIN_TILE)
    with pytest.raises(InputError, match=f"at least {MIN_TILE}"):
        check_tile(MIN_TILE - 1)
