"""tokenset.data: slicing, compositing, dedupe, splits, IDX, ImageFolder, fetch errors, conversions.

Nothing here needs apt or the network: Debian packages are synthetic .deb files served by a fake apt-get.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokenset import atomic, data, images
from tokenset.data import debian, prepared, transforms
from tokenset.config import DataConfig

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- helpers


def smooth_tiles(n: int, rng: np.random.Generator, tile: int = 32) -> np.ndarray:
    """n distinct opaque tiles (n, tile, tile, 4): a random colour plus a gentle gradient and a little noise."""
    ramp = np.linspace(0, 40, tile)[None, :, None] + np.linspace(0, 20, tile)[:, None, None]
    out = []
    for _ in range(n):
        base = rng.integers(20, 180, size=3)[None, None, :]
        rgb = np.clip(base + ramp + rng.normal(0, 2, (tile, tile, 3)), 0, 255).astype(np.uint8)
        out.append(np.concatenate([rgb, np.full((tile, tile, 1), 255, np.uint8)], axis=-1))
    return np.stack(out)


def sheet_from(cells: np.ndarray, cols: int) -> np.ndarray:
    """(rows * cols, t, t, 4) -> (rows * t, cols * t, 4), row-major."""
    n, t = cells.shape[:2]
    rows = n // cols
    return cells.reshape(rows, cols, t, t, 4).transpose(0, 2, 1, 3, 4).reshape(rows * t, cols * t, 4)


def png_bytes(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[arr.dtype]
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def make_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal valid .deb (ar: debian-binary, control.tar.gz, data.tar.xz) holding ``files``."""
    def tar(entries: dict[str, bytes], mode: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as t:
            for name, payload in entries.items():
                info = tarfile.TarInfo("./" + name)
                info.size, info.mode = len(payload), 0o644
                t.addfile(info, io.BytesIO(payload))
        return buf.getvalue()

    control = b"Package: fake\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
    members = [("debian-binary", b"2.0\n"), ("control.tar.gz", tar({"control": control}, "w:gz")),
               ("data.tar.xz", tar(files, "w:xz"))]
    out = bytearray(b"!<arch>\n")
    for name, payload in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}`\n".encode()
        out += payload + (b"\n" if len(payload) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


FAKE_APT = """#!{python}
import os, shutil, sys
state = os.environ["FAKE_APT_STATE"]
with open(os.path.join(state, "log"), "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] == "update":
    open(os.path.join(state, "updated"), "w").close()
    sys.exit(0)
if sys.argv[1] == "download":
    if os.environ.get("FAKE_APT_EMPTY_LISTS") == "1" and not os.path.exists(os.path.join(state, "updated")):
        sys.stderr.write("E: Unable to locate package " + sys.argv[2] + "\\n")
        sys.exit(100)
    src = os.path.join(state, sys.argv[2] + ".deb")
    if not os.path.exists(src):
        sys.stderr.write("E: Unable to locate package " + sys.argv[2] + "\\n")
        sys.exit(100)
    shutil.copy(src, sys.argv[2] + "_1.0_all.deb")
    sys.exit(0)
sys.exit(1)
"""


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """A PATH holding only a fake apt-get (so also no dpkg-deb: the Python .deb reader is used)."""
    bin_dir, state = tmp_path / "bin", tmp_path / "apt-state"
    bin_dir.mkdir()
    state.mkdir()
    script = bin_dir / "apt-get"
    script.write_text(FAKE_APT.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_APT_STATE", str(state))
    return state


def crawl_sheets(rng: np.random.Generator) -> dict[str, np.ndarray]:
    floor = smooth_tiles(12, rng)  # 3 x 4 cells
    floor[1, ..., 3] = 0  # transparent (its RGB is not zero: still dropped)
    floor[2] = [10, 200, 30, 255]  # one colour: dropped
    floor[5] = floor[4]  # duplicate within the sheet
    floor[6, :16, :, 3] = 128  # half transparent: composited
    wall = smooth_tiles(8, rng)  # 2 x 4 cells
    wall[3] = floor[0]  # duplicate of a floor tile
    return {"floor": floor, "wall": wall}


def crawl_deb_files(sheets: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {f"{data.CRAWL_TILES_DIR}/{name}.png": png_bytes(sheet_from(cells, 4)) for name, cells in sheets.items()}


# ----------------------------------------------------------------------------------------- conversions


def test_conversions_are_the_images_modules():
    # data re-exports the one conversion pair of tokenset.images (no second definition)
    assert data.to_float is images.to_float and data.to_uint8 is images.to_uint8


def test_composite_on_black():
    rgba = np.array([[[200, 100, 50, 0], [200, 100, 50, 255], [200, 100, 50, 128]]], np.uint8)
    assert data.composite_on_black(rgba).tolist() == [[[0, 0, 0], [200, 100, 50], [100, 50, 25]]]


@pytest.mark.parametrize("n", [1, 3])
def test_fit_size_pad_and_resize(n):
    x = torch.randint(1, 256, (n, 3, 28, 28), dtype=torch.uint8)
    padded = data.fit_size(x, 32, "pad")
    assert padded.shape == (n, 3, 32, 32)
    assert torch.equal(padded[:, :, 2:30, 2:30], x) and padded[:, :, :2].sum() == 0 and padded[..., 30:].sum() == 0
    flat = torch.full((n, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(data.fit_size(flat, 16, "resize"), torch.full((n, 3, 16, 16), 77, dtype=torch.uint8))
    with pytest.raises(ValueError):
        data.fit_size(x, 16, "pad")


def test_random_hflip_follows_generator():
    x = torch.arange(4 * 3 * 2 * 5, dtype=torch.float32).view(4, 3, 2, 5)
    out = data.random_hflip(x, torch.Generator().manual_seed(3))
    mask = torch.rand(4, generator=torch.Generator().manual_seed(3)) < 0.5
    for i in range(4):
        assert torch.equal(out[i], x[i].flip(-1) if mask[i] else x[i])


def test_flip_coin_is_fair_and_changes_with_epoch():
    coins = np.array([transforms.coin(0, 0, i) for i in range(4000)])
    assert abs(coins.mean() - 0.5) < 0.04  # sd 0.008: a 5-sigma bound
    other = np.array([transforms.coin(0, 1, i) for i in range(4000)])
    assert 0.4 < (coins != other).mean() < 0.6


# ----------------------------------------------------------------------------------------- crawl slicing


def test_slice_sheet_row_major():
    cells = smooth_tiles(6, np.random.default_rng(0))
    sheet = np.concatenate([sheet_from(cells, 3), np.zeros((5, 96, 4), np.uint8)])  # a partial row: left out
    sliced, index = data.slice_sheet(sheet)
    assert np.array_equal(sliced, cells) and index.tolist() == list(range(6))


def test_tiles_drop_transparent_constant_and_duplicates():
    sheets = crawl_sheets(np.random.default_rng(1))
    out = data.tiles_from_sheets([(k, sheet_from(v, 4)) for k, v in sheets.items()])
    assert out["class_names"] == ["floor", "wall"]
    assert out["dropped"]["floor"] == {"cells": 12, "transparent": 1, "constant": 1, "duplicate": 1, "kept": 9}
    assert out["dropped"]["wall"] == {"cells": 8, "transparent": 0, "constant": 0, "duplicate": 1, "kept": 7}
    kept_floor = [0, 3, 4, 6, 7, 8, 9, 10, 11]
    kept_wall = [0, 1, 2, 4, 5, 6, 7]
    assert out["origin"].tolist() == kept_floor + kept_wall
    assert out["labels"].tolist() == [0] * 9 + [1] * 7
    expected = np.concatenate([data.composite_on_black(sheets["floor"][kept_floor]),
                               data.composite_on_black(sheets["wall"][kept_wall])])
    assert out["images"].dtype == np.uint8 and np.array_equal(out["images"], expected)
    assert out["images"][3, :16].max() < 200  # the half-transparent tile was darkened, not kept raw
    assert len({im.tobytes() for im in out["images"]}) == len(out["images"])


def test_grid_alignment_separates_grid_and_packed_sheets(tmp_path):
    grid = sheet_from(smooth_tiles(32, np.random.default_rng(2)), 8)
    packed = np.roll(grid, (13, 11), axis=(0, 1))  # sprites no longer start on multiples of 32
    assert data.grid_alignment(grid) > 2 * data.GRID_MIN_ALIGNMENT
    assert data.grid_alignment(packed) < data.GRID_MIN_ALIGNMENT
    Image.fromarray(packed, "RGBA").save(tmp_path / "main.png")
    Image.fromarray(grid, "RGBA").save(tmp_path / "floor.png")
    assert [n for n, _ in data.read_crawl_sheets(tmp_path, ["floor"])] == ["floor"]
    with pytest.raises(data.DataError, match="not on a 32 px grid"):
        data.read_crawl_sheets(tmp_path, ["floor", "main"])
    with pytest.raises(data.DataError, match="no sprite sheet"):
        data.read_crawl_sheets(tmp_path, ["dngn"])


# ----------------------------------------------------------------------------------------- splits and IDX


@pytest.mark.parametrize("val_fraction", [0.0, 0.1, 0.5])
def test_split_is_deterministic_and_stratified(val_fraction):
    labels = np.repeat(np.arange(4), [1, 2, 40, 333])
    split = data.stratified_split(labels, val_fraction, seed=7)
    assert split.dtype == np.uint8 and set(np.unique(split)) <= {0, 1}
    assert np.array_equal(split, data.stratified_split(labels, val_fraction, seed=7))
    for c, n in enumerate([1, 2, 40, 333]):
        n_val = int(split[labels == c].sum())
        assert n_val == prepared.n_val(n, val_fraction)
        assert n_val == (0 if val_fraction == 0 or n == 1 else min(n - 1, max(1, round(val_fraction * n))))
    if val_fraction > 0:
        assert not np.array_equal(split, data.stratified_split(labels, val_fraction, seed=8))
        # a class's split depends only on its own members
        alone = data.stratified_split(labels[labels == 3], val_fraction, seed=7)
        assert np.array_equal(alone, split[labels == 3])


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip_and_errors(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    labels = np.array([3, -1, 70000], ">i4")
    for name, arr in [("im", images), ("lab", labels)]:
        raw = idx_bytes(arr)
        path = tmp_path / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
        got = data.read_idx(path)
        assert got.shape == arr.shape and np.array_equal(got, arr) and got.dtype.isnative
    (tmp_path / "short").write_bytes(idx_bytes(images)[:-1])
    with pytest.raises(data.DataError, match="needs 60 bytes"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(data.DataError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")


# ----------------------------------------------------------------------------------------- fetch + prepare


def test_apt_missing_gives_how_to(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    cfg = DataConfig.preset("tiny", root=str(tmp_path / "d"))
    with pytest.raises(data.DataError) as err:
        data.prepare(cfg)
    msg = str(err.value)
    assert "apt-get is not on PATH" in msg and "crawl-tiles-data" in msg and "imagefolder" in msg
    assert isinstance(err.value, RuntimeError)


def test_empty_apt_lists_not_root_says_what_to_run(tmp_path, fake_apt, monkeypatch):
    monkeypatch.setenv("FAKE_APT_EMPTY_LISTS", "1")
    monkeypatch.setattr(debian, "_is_root", lambda: False)
    with pytest.raises(data.DataError, match="sudo apt-get update"):
        data.prepare(DataConfig.preset("tiny", root=str(tmp_path / "d")))
    assert (fake_apt / "log").read_text().split("\n")[:-1] == ["download crawl-tiles-data"]


def test_package_unavailable(tmp_path, fake_apt, monkeypatch):
    monkeypatch.setattr(debian, "_is_root", lambda: True)
    with pytest.raises(data.DataError, match="copy crawl-tiles-data_"):
        data.prepare(DataConfig.preset("tiny", root=str(tmp_path / "d")))


def test_crawl_end_to_end_with_update_and_cache(tmp_path, fake_apt, monkeypatch):
    sheets = crawl_sheets(np.random.default_rng(3))
    make_deb(fake_apt / "crawl-tiles-data.deb", crawl_deb_files(sheets))
    monkeypatch.setenv("FAKE_APT_EMPTY_LISTS", "1")
    monkeypatch.setattr(debian, "_is_root", lambda: True)
    cfg = DataConfig.preset("tiny", root=str(tmp_path / "d"), val_fraction=0.25)
    npz = data.prepare(cfg)
    assert (fake_apt / "log").read_text().split("\n")[:-1] == [
        "download crawl-tiles-data", "update", "download crawl-tiles-data"]
    with np.load(npz, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    assert arrays["images"].shape == (16, 32, 32, 3) and arrays["labels"].dtype == np.int64
    assert arrays["class_names"].tolist() == ["floor", "wall"]
    manifest = json.loads(npz.with_suffix(".json").read_text())
    assert manifest["counts"]["val"] == {"floor": 2, "wall": 2} and manifest["n_train"] == 12
    assert manifest["npz_sha256"] == atomic.sha256_file(npz)
    assert manifest["source"]["deb_sha256"] == atomic.sha256_file(fake_apt / "crawl-tiles-data.deb")
    # cached: no apt at all now, and a forced rebuild is byte-identical
    monkeypatch.setenv("PATH", str(tmp_path))
    assert data.prepare(cfg) == npz and (fake_apt / "log").read_text().count("\n") == 3
    before = atomic.sha256_file(npz)
    data.prepare(cfg, force=True)
    assert atomic.sha256_file(npz) == before
    # a new seed re-splits from the cached raw files
    data.prepare(cfg.replace(seed=1))
    assert (fake_apt / "log").read_text().count("\n") == 3
    # the API
    images, labels = data.load_arrays(cfg, "train")
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    ds = data.load_dataset(cfg, "val", as_float=True)
    x, y = ds[0]
    assert len(ds) == 4 and x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() <= x.max() <= 1
    assert isinstance(y, int) and data.class_names(cfg) == ["floor", "wall"]
    small = data.load_arrays(cfg.replace(image_size=16), "val")[0]
    assert small.shape == (4, 3, 16, 16)


def test_fashion_end_to_end_pads(tmp_path, fake_apt):
    rng = np.random.default_rng(4)
    files = {}
    for prefix, n in [("train", 6), ("t10k", 3)]:
        files[f"{data.FASHION_DIR}/{prefix}-images-idx3-ubyte.gz"] = gzip.compress(
            idx_bytes(rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)))
        files[f"{data.FASHION_DIR}/{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(
            idx_bytes(np.arange(n, dtype=np.uint8) % 10))
    make_deb(fake_apt / "dataset-fashion-mnist.deb", files)
    cfg = DataConfig.preset("tiny", root=str(tmp_path / "d")).replace(name="fashion")
    images, labels = data.load_arrays(cfg, "train")
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == list(range(6))
    assert images[:, :, :2].sum() == 0 and images[:, :, 2:30, 2:30].min() >= 1  # padded with black, content kept
    assert torch.equal(images[:, 0], images[:, 2])  # grey repeated
    assert len(data.load_dataset(cfg, "val")) == 3 and data.class_names(cfg)[9] == "Ankle boot"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
def test_extract_with_dpkg_deb_matches_python_reader(tmp_path):
    deb = make_deb(tmp_path / "x.deb", {"usr/share/a.txt": b"hello", "usr/b/c.bin": bytes(range(256))})
    a = data.extract_deb(deb, tmp_path / "dpkg")
    debian._extract_deb_python(deb, tmp_path / "py")
    for rel in ["usr/share/a.txt", "usr/b/c.bin"]:
        assert (a / rel).read_bytes() == (tmp_path / "py" / rel).read_bytes()


def test_real_crawl_data_if_prepared():
    npz, manifest = REPO / "data/prepared/crawl.npz", REPO / "data/prepared/crawl.json"
    if not (npz.is_file() and manifest.is_file()):
        pytest.skip("real crawl data not prepared (run `python -m tokenset.data`)")
    doc = json.loads(manifest.read_text())
    assert doc["npz_sha256"] == atomic.sha256_file(npz)
    with np.load(npz, allow_pickle=False) as f:
        images, labels, split = f["images"], f["labels"], f["split"]
        names = f["class_names"].tolist()
    assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8 and len(images) > 1000
    assert names == doc["class_names"] and labels.max() == len(names) - 1
    assert len({im.tobytes() for im in images}) == len(images)  # no duplicates
    assert (images.reshape(len(images), -1).std(axis=1) > 0).all()  # no constant tiles
    assert int((split == 1).sum()) == doc["n_val"]


# ----------------------------------------------------------------------------------------- ImageFolder


def write_folder(root: Path) -> None:
    rng = np.random.default_rng(5)
    for cls in ["cat", "dog"]:
        (root / "train" / cls).mkdir(parents=True)
        for i in range(4):  # non-square RGB
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "train" / cls / f"rgb{i}.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(root / "train/cat/grey.png")
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[..., :3] = 255  # white but fully transparent -> black
    Image.fromarray(rgba, "RGBA").save(root / "train/dog/clear.png")
    Image.fromarray(rng.integers(0, 256, (20, 36), dtype=np.uint8), "L").convert("P").save(root / "train/dog/pal.png")
    Image.fromarray(np.full((16, 16), 100 * 257, np.uint16)).save(root / "train/cat/deep.png")  # 16-bit grey
    (root / "train/cat/notes.txt").write_text("not an image: ignored")


def folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), image_size=16, val_fraction=kw.pop("val_fraction", 0.3),
                      seed=0, **kw)


def test_imagefolder_modes_and_sizes(tmp_path):
    write_folder(tmp_path)
    cfg = folder_cfg(tmp_path)
    assert data.class_names(cfg) == ["cat", "dog"]
    train, val = data.load_dataset(cfg, "train"), data.load_dataset(cfg, "val")
    assert len(train) + len(val) == 12 and len(val) == 4  # round(0.3 * 6) per class
    for ds in (train, val):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and y in (0, 1)
    item = {Path(ds.paths[i]).name: ds[i][0] for ds in (train, val) for i in range(len(ds))}
    assert item["clear.png"].max() == 0  # alpha composited on black
    grey = item["grey.png"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert (item["deep.png"] == 100).all()  # 16 bit scaled by 1/257, not clipped
    images, labels = data.load_arrays(cfg, "train")
    assert images.shape == (len(train), 3, 16, 16) and labels.tolist() == train.labels


def test_imagefolder_uses_val_dir_and_flip(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "val/dog").mkdir(parents=True)
    Image.fromarray(np.tile(np.arange(16, dtype=np.uint8)[None, :, None] * 16, (16, 1, 3))).save(
        tmp_path / "val/dog/ramp.png")
    cfg = folder_cfg(tmp_path)
    val = data.load_dataset(cfg, "val")
    assert len(val) == 1 and val.labels == [1] and len(data.load_dataset(cfg, "train")) == 12
    x = val[0][0]
    flipped = data.load_dataset(cfg, "val", flip=True, flip_seed=0)
    outcomes = set()
    for epoch in range(20):
        flipped.set_epoch(epoch)
        y = flipped[0][0]
        assert torch.equal(y, x) or torch.equal(y, x.flip(-1))
        outcomes.add(torch.equal(y, x))
    assert outcomes == {True, False}


def test_adm_center_crop():
    rng = np.random.default_rng(6)
    square = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert np.array_equal(data.adm_center_crop(square, 16), np.asarray(square))
    double = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert np.array_equal(data.adm_center_crop(double, 16), np.asarray(double.resize((16, 16), Image.BOX)))
    wide = np.zeros((16, 48, 3), np.uint8)
    wide[:, 16:32] = 200  # the centre third survives, the black sides are cropped away
    assert (data.adm_center_crop(Image.fromarray(wide), 16) == 200).all()


def test_truncated_file_listed_or_skipped(tmp_path):
    write_folder(tmp_path)
    good = (tmp_path / "train/cat/rgb0.jpg").read_bytes()
    (tmp_path / "train/cat/broken.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "train/dog/garbage.png").write_bytes(b"not a png")
    with pytest.raises(data.DataError) as err:
        data.prepare(folder_cfg(tmp_path))
    assert "2 unreadable" in str(err.value) and "broken.jpg" in str(err.value) and "garbage.png" in str(err.value)
    cfg = folder_cfg(tmp_path, skip_bad_files=True, val_fraction=0.0)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        ds = data.load_dataset(cfg, "train")
    assert len(ds) == 12 and not any("broken" in p or "garbage" in p for p in ds.paths)


def test_empty_or_missing_folders(tmp_path):
    with pytest.raises(data.DataError, match="train/<class>"):
        data.prepare(folder_cfg(tmp_path))
    (tmp_path / "train").mkdir()
    with pytest.raises(data.DataError, match="no class folders"):
        data.prepare(folder_cfg(tmp_path))
    (tmp_path / "train/cat").mkdir()
    (tmp_path / "train/cat/readme.txt").write_text("x")
    with pytest.raises(data.DataError, match="hold no images"):
        data.prepare(folder_cfg(tmp_path))


# ----------------------------------------------------------------------------------------- loader


def test_make_loader_seeded_and_checked():
    ds = data.ArrayDataset(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous(),
                           torch.arange(10), ["a"] * 10)
    order = lambda seed: torch.cat([y for _, y in data.make_loader(ds, 4, True, seed)]).tolist()  # noqa: E731
    assert order(0) == order(0) and sorted(order(0)) == list(range(10)) and order(0) != order(1)
    batches = list(data.make_loader(ds, 4, False, 0, drop_last=True))
    assert [b[0].shape[0] for b in batches] == [4, 4] and batches[0][0].dtype == torch.uint8
    with pytest.raises(ValueError, match="no batches"):
        data.make_loader(ds, 11, True, 0, drop_last=True)
    with pytest.raises(RuntimeError, match="init_process_group"):
        data.make_loader(ds, 4, True, 0, distributed=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.set_epoch(data.make_loader(ds, 4, True, 0), 3)
    assert ds.epoch == 3
