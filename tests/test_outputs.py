"""The output guard (outputs.py), the one atomic writer (atomic.py) and the writer dispatch and
naming (writers.py): never an input, no overwrite without force, no temp file left behind,
even when the process is killed with SIGTERM or SIGHUP mid-write."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from arssr_rt.atomic import atomic_write, atomic_write_folder, remove_stale_temps, temp_path_for
from arssr_rt.cli import main
from arssr_rt.errors import OutputError
from arssr_rt.outputs import check_output, normalized
from arssr_rt.writers import output_format, output_name, size_label

from conftest import FIXTURE_PATH, listing


def copy_fixture(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(FIXTURE_PATH.read_bytes())
    return path


# ------------------------------------------------------------------ the guard


def test_guard_resolves_dot_dot_and_symlinked_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    assert normalized(tmp_path / "sub" / ".." / "x.nii.gz") == normalized(tmp_path / "x.nii.gz")
    assert normalized(tmp_path / "link" / "x.nii.gz") == normalized(tmp_path / "sub" / "x.nii.gz")


def test_guard_never_writes_onto_an_input_even_with_force(tmp_path):
    source = copy_fixture(tmp_path / "in" / "t1.nii.gz")
    (tmp_path / "alias.nii.gz").symlink_to(source)
    os.link(source, tmp_path / "hard.nii.gz")
    for target in (source, tmp_path / "in" / "sub" / ".." / "t1.nii.gz", tmp_path / "alias.nii.gz", tmp_path / "hard.nii.gz"):
        (tmp_path / "in" / "sub").mkdir(exist_ok=True)
        with pytest.raises(OutputError, match="is the input"):
            check_output(target, inputs=[source], force=True)


def test_guard_protects_the_data_half_of_an_analyze_pair_and_dicom_folders(tmp_path):
    (tmp_path / "a.hdr").write_bytes(b"x")
    (tmp_path / "a.img").write_bytes(b"x")
    with pytest.raises(OutputError, match="is the input"):
        check_output(tmp_path / "a.img", inputs=[tmp_path / "a.hdr"], force=True)
    series = tmp_path / "series"
    series.mkdir()
    (series / "IM1.dcm").write_bytes(b"x")
    with pytest.raises(OutputError, match="inside the input series folder"):
        check_output(series / "out.nii.gz", inputs=[series], force=True)
    with pytest.raises(OutputError, match="holding the input"):
        check_output(tmp_path, inputs=[series], force=True, folder=True)


def test_guard_refuses_existing_files_folders_and_missing_parents(tmp_path):
    (tmp_path / "old.nii.gz").write_bytes(b"keep")
    with pytest.raises(OutputError, match="already exists.*--force"):
        check_output(tmp_path / "old.nii.gz")
    assert check_output(tmp_path / "old.nii.gz", force=True) == normalized(tmp_path / "old.nii.gz")
    with pytest.raises(OutputError, match="does not exist"):
        check_output(tmp_path / "no" / "such" / "x.nii.gz")
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path, force=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(tmp_path / "old.nii.gz", force=True, folder=True)
    assert (tmp_path / "old.nii.gz").read_bytes() == b"keep"


# ------------------------------------------------------------------ atomic writes


def test_atomic_folder_write_replaces_only_when_complete(tmp_path):
    target = tmp_path / "series"
    atomic_write_folder(target, lambda stage: (stage / "a").write_text("1"))

    def failing(stage: Path) -> None:
        (stage / "b").write_text("2")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write_folder(target, failing)
    assert listing(tmp_path) == ["series"] and listing(target) == ["a"]


def test_stale_temp_cleanup_spares_a_live_writer_and_removes_a_dead_one(tmp_path):
    """Two batches on one OUT_DIR: the second's cleanup must not delete the first's temp."""
    out = tmp_path / "a_x2.nii.gz"
    live = temp_path_for(out)  # this process: alive
    live.write_bytes(b"being written")
    dead_proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = Path(str(live).replace(f"-{os.getpid()}-", f"-{int(dead_proc.stdout)}-"))
    dead.write_bytes(b"left by a killed run")
    foreign = tmp_path / ".a_x2.nii.gz.otherhost-12-0123abcd.tmp.nii.gz"  # another node: by age only
    foreign.write_bytes(b"another node")
    removed = remove_stale_temps(tmp_path, [out.name])
    assert removed == [dead] and live.exists() and foreign.exists()
    old = time.time() - 2 * 24 * 3600
    os.utime(foreign, (old, old))
    assert remove_stale_temps(tmp_path, [out.name]) == [foreign]


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from arssr_rt.atomic import atomic_write

    def slow(tmp):
        with open(tmp, "wb") as f:
            f.write(b"x" * 1000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)

    atomic_write(Path(sys.argv[1]), slow)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_write_removes_the_temp_file(tmp_path, sig):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # a default handler in the child even when the suite runs under nohup (SIGHUP inherited as ignored)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "out.nii.gz")], stdout=subprocess.PIPE, env=env, text=True,
                            preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "writing"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.nii.gz.")]  # the temp exists now
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig
    assert listing(tmp_path) == [] and not any(tmp_path.iterdir())


def test_atomic_write_restores_the_signal_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)  # SIGHUP is ignored under nohup
    atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("a"))
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


# ------------------------------------------------------------------ naming and dispatch


def test_one_naming_scheme_for_every_command():
    assert output_name("t1.nii.gz", size_label("2", None, None)) == "t1_x2.nii.gz"
    assert output_name("t1.nrrd", size_label("2.0", None, None)) == "t1_x2.nii.gz"
    assert output_name("scan.hdr", size_label(None, "0.5", None)) == "scan_0.5mm.nii.gz"
    assert output_name("series", size_label("1,1,3", None, None), "dicom") == "series_x1x1x3"
    assert size_label(None, None, "256,256,100") == "256x256x100" and size_label([2, 2, 2], None, None) == "x2"


def test_format_follows_the_suffix_and_dicom_is_asked_for():
    assert output_format("a.nii.gz") == output_format("a.NII") == output_format(None) == "nifti"
    assert output_format("out_series", "dicom") == "dicom"
    assert output_format("a.mgz") == output_format("a.MGH") == output_format("b.mgz", "mgh") == "mgh"
    assert output_name("t1.mgz", "x2", "mgh") == "t1_x2.mgz" and output_name("t1.mgz", "x2") == "t1_x2.nii.gz"
    with pytest.raises(OutputError, match=r"\.mgz or \.mgh"):
        output_format("a.nii.gz", "mgh")
    assert output_format("a.nrrd") == output_format("a.NRRD") == output_format("b.nrrd", "nrrd") == "nrrd"
    assert output_name("t1.nii.gz", "x2", "nrrd") == "t1_x2.nrrd"
    with pytest.raises(OutputError, match=r"must end in \.nrrd"):
        output_format("a.nii.gz", "nrrd")
    with pytest.raises(OutputError, match=r"detached NRRD header"):
        output_format("a.nhdr")
    with pytest.raises(OutputError, match=r"\.nii, \.nii\.gz, \.mgz, \.mgh or \.nrrd.*--output-format dicom"):
        output_format("a.png")
    with pytest.raises(OutputError, match="is a folder"):
        output_format("a.nii.gz", "dicom")


def test_upsample_writes_dicom_like_batch(tmp_path, tiny_bundle):
    pytest.importorskip("pydicom")
    from arssr_rt.readers import read_volume

    source = copy_fixture(tmp_path / "t1.nii.gz")
    assert main(["upsample", str(source), "--scale", "1,1,2", "--model", str(tiny_bundle), "--threads", "1",
                 "--output-format", "dicom", "--quiet"]) == 0
    series = read_volume(tmp_path / "t1_x1x1x2")
    assert series.shape == (64, 64, 128)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_upsample_refuses_to_write_onto_its_input_even_with_force(tmp_path, tiny_bundle, capsys):
    source = copy_fixture(tmp_path / "t1.nii.gz")
    before = source.read_bytes()
    code = main(["upsample", str(source), "--scale", "2", "--model", str(tiny_bundle), "-o", str(tmp_path / "x" / ".." / "t1.nii.gz"),
                 "--force", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is the input" in err[0]
    assert source.read_bytes() == before and listing(tmp_path) == ["t1.nii.gz"]


def test_save_volume_protects_the_volume_it_was_read_from(tmp_path):
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.nifti_write import save_volume
    from arssr_rt.readers import read_volume

    source = copy_fixture(tmp_path / "t1.nii.gz")
    volume = read_volume(source)
    grid = plan_output_grid(volume.shape, volume.affine, shape=volume.shape)
    with pytest.raises(OutputError, match="is the input"):
        save_volume(source, volume.data, grid, volume, force=True)
    assert nib.load(source).shape == (64, 64, 64) and np.array_equal(np.asarray(nib.load(source).dataobj), np.asarray(nib.load(FIXTURE_PATH).dataobj))


def test_upsample_never_writes_the_data_file_of_a_detached_nrrd(tmp_path):
    """A .nhdr's ``data file:`` is half of the input, like an Analyze .img: an output onto it
    (or a DICOM folder output replacing its folder) used to be written with --force."""
    nrrd = pytest.importorskip("nrrd")
    img = nib.load(FIXTURE_PATH)
    nrrd.write(str(tmp_path / "t1.nhdr"), np.asarray(img.dataobj), {"space": "right-anterior-superior", "encoding": "raw",
               "space directions": img.affine[:3, :3].T, "space origin": img.affine[:3, 3]}, detached_header=True)
    (tmp_path / "data").mkdir()
    raw = next(p for p in tmp_path.iterdir() if p.name.startswith("t1.") and p.suffix != ".nhdr")
    raw.rename(tmp_path / "data" / "voxels.nii")  # a data file name an output may also have
    header = tmp_path / "t1.nhdr"
    header.write_text(re.sub(r"data file: .*", "data file: data/voxels.nii", header.read_text()))
    before = (tmp_path / "data" / "voxels.nii").read_bytes()
    for out in (["-o", str(tmp_path / "data" / "voxels.nii")], ["--output-format", "dicom", "-o", str(tmp_path / "data")]):
        code = main(["upsample", str(header), "--scale", "2", "--interp", "linear", *out, "--force", "--quiet"])
        assert code == 2
    assert (tmp_path / "data" / "voxels.nii").read_bytes() == before and listing(tmp_path / "data") == ["voxels.nii"]
