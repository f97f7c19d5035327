"""List parsing, path resolution, pairing by key, decoding, the image store and augmentation."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
from util import UserError


def write_rgb(path: Path, value: int | np.ndarray, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((size, size, 3), value, np.uint8) if np.isscalar(value) else value
    Image.fromarray(array).save(path)
    return path


def write_depth(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    """Five samples of two subjects; depth list in another order; lists under data/."""
    root = tmp_path / "root"
    rgb_lines, depth_lines = [], []
    for i in range(5):
        subject = "spNO.1" if i < 3 else "spNO.7"
        stem = f"{subject}-a-{10 + i}-{subject}-a-{i}_diff"
        label = i % 3
        write_rgb(root / "imgs" / f"{stem}.png", 40 * i)
        write_depth(root / "depth" / f"{stem}_depth.png", np.full((16, 16), 50 * i, np.uint8))
        rgb_lines.append(f"imgs/{stem}.png {label} 0 {i / 10}")
        depth_lines.append(f"depth/{stem}_depth.png {label} 0")
    depth_lines = depth_lines[2::-1] + depth_lines[:2:-1]  # same samples per subject, other order
    for view, lines in (("v_rgb", rgb_lines), ("v_depth", depth_lines)):
        folder = root / "data" / view
        folder.mkdir(parents=True)
        (folder / "spNO1_test.txt").write_text("\n".join(lines[:3]) + "\n")
        (folder / "spNO7_test.txt").write_text("\n".join(lines[3:]) + "\n")
        (folder / "spNO1_train.txt").write_text("\n".join(lines[3:]) + "\n")
        (folder / "spNO7_train.txt").write_text("\n".join(lines[:3]) + "\n")
    (root / "data" / "v_rgb" / "subName.txt").write_text("spNO1\nspNO7\n")
    return root


def test_sample_key_strips_view_suffix():
    assert dataset.sample_key("x/spNO.166-b-837-spNO.166-b-834_diff_depth.png") == "spNO.166-b-837-spNO.166-b-834_diff"
    assert dataset.sample_key("spNO.1-a-2-spNO.1-a-1_diff_gray.png") == "spNO.1-a-2-spNO.1-a-1_diff"
    assert dataset.sample_key("spNO.1-a-2-spNO.1-a-1_diff.png") == "spNO.1-a-2-spNO.1-a-1_diff"
    assert dataset.subject_of("spNo.166-b-837") == "spNO166"
    assert dataset.subject_of("spNO210-b-1") == "spNO210"


def test_pairs_by_key_not_line_order(pairs: Path):
    folder = dataset.find_list_folder(pairs)
    samples = dataset.load_split(folder, pairs, "spNO1", "test")
    assert [s.key for s in samples] == [f"spNO.1-a-{10 + i}-spNO.1-a-{i}_diff" for i in range(3)]
    for s in samples:
        assert s.depth_path.name == f"{s.key}_depth.png"
        assert s.subject == "spNO1"
    assert [s.intensity for s in samples] == [0.0, 0.1, 0.2]


def test_foreign_absolute_paths_resolve_by_longest_tail(pairs: Path, tmp_path: Path):
    lst = tmp_path / "foreign.txt"
    lst.write_text(f"/home/someone/data/imgs/spNO.1-a-10-spNO.1-a-0_diff.png 0 0\n")
    [entry] = dataset.read_list(lst, pairs)
    assert entry.path == pairs / "imgs" / "spNO.1-a-10-spNO.1-a-0_diff.png"
    lst.write_text(f"/mnt/x/pics/spNO.1-a-10-spNO.1-a-0_diff.png 0 0\n")
    [entry] = dataset.read_list(lst, pairs, dataset.parse_prefixes(["/mnt/x/pics=imgs"]))
    assert entry.path == pairs / "imgs" / "spNO.1-a-10-spNO.1-a-0_diff.png"


@pytest.mark.parametrize("line, message", [
    ("imgs/spNO.1-a-10-spNO.1-a-0_diff.png 0", "expected '<path> <label> <dbtype> [intensity]'"),
    ("imgs/spNO.1-a-10-spNO.1-a-0_diff.png zero 0", "label 'zero' is not an integer"),
    ("imgs/spNO.1-a-10-spNO.1-a-0_diff.png -1 0", "label -1 is negative"),
    ("imgs/spNO.1-a-10-spNO.1-a-0_diff.png 0 x", "dbtype 'x' is not an integer"),
    ("imgs/spNO.1-a-10-spNO.1-a-0_diff.png 0 0 high", "intensity 'high' is not a number"),
    ("imgs/missing.png 0 0", "image not found: imgs/missing.png"),
])
def test_bad_lines_name_file_and_line(pairs: Path, tmp_path: Path, line: str, message: str):
    lst = tmp_path / "bad.txt"
    lst.write_text(f"imgs/spNO.1-a-11-spNO.1-a-1_diff.png 1 0\n\n{line}\n")
    with pytest.raises(UserError, match=rf"bad.txt:3: .*{message.split('[')[0][:25]}"):
        dataset.read_list(lst, pairs)


def test_empty_and_missing_lists(tmp_path: Path):
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(UserError, match="empty.txt: list is empty"):
        dataset.read_list(tmp_path / "empty.txt", tmp_path)
    with pytest.raises(UserError, match="nope.txt: list file not found"):
        dataset.read_list(tmp_path / "nope.txt", tmp_path)
    with pytest.raises(UserError, match="no v_rgb/ and v_depth/"):
        dataset.find_list_folder(tmp_path / "nowhere", tmp_path / "nowhere")


def test_unpaired_samples_warned_or_strict(pairs: Path, capsys):
    depth_list = pairs / "data" / "v_depth" / "spNO1_test.txt"
    depth_list.write_text("\n".join(depth_list.read_text().splitlines()[1:]) + "\n")
    folder = dataset.find_list_folder(pairs)
    samples = dataset.load_split(folder, pairs, "spNO1", "test")
    assert len(samples) == 2
    assert "1 RGB sample(s) without a matching depth sample" in capsys.readouterr().err
    with pytest.raises(UserError, match="spNO1_test.txt: 1 RGB sample"):
        dataset.load_split(folder, pairs, "spNO1", "test", strict_pairs=True)


def test_label_disagreement_and_duplicates(pairs: Path, tmp_path: Path):
    rgb = dataset.read_list(pairs / "data" / "v_rgb" / "spNO1_test.txt", pairs)
    depth = dataset.read_list(pairs / "data" / "v_depth" / "spNO1_test.txt", pairs)
    from dataclasses import replace
    with pytest.raises(UserError, match="disagrees"):
        dataset.pair_views(rgb, [replace(depth[0], label=depth[0].label + 1)] + depth[1:])
    with pytest.raises(UserError, match="duplicate sample"):
        dataset.pair_views(rgb + rgb[:1], depth)


def test_depth_8_and_16_bit_load_to_same_scale(tmp_path: Path):
    ramp8 = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    p8 = write_depth(tmp_path / "d8.png", ramp8)
    p16 = write_depth(tmp_path / "d16.png", ramp8.astype(np.uint16) * 257)
    d8 = dataset.decode_depth(p8, 16, "x")
    d16 = dataset.decode_depth(p16, 16, "x")
    assert d8.shape == (1, 16, 16) and d8.dtype == np.uint16
    np.testing.assert_array_equal(d8, d16)
    assert d16.max() == 240 * 257


@pytest.mark.parametrize("name, mode", [("grey16.png", "I;16"), ("grey32.tif", "I")])
def test_16_bit_grey_rgb_image_is_scaled_not_white(tmp_path: Path, name: str, mode: str):
    """A 16-bit grey image in an RGB list loads as its 8-bit grey in all three channels."""
    ramp8 = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    Image.fromarray(ramp8.astype(np.uint16) * 257).convert(mode).save(tmp_path / name)
    assert Image.open(tmp_path / name).mode == mode
    rgb = dataset.decode_rgb(tmp_path / name, 16, "x")
    assert rgb.shape == (3, 16, 16) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.repeat(ramp8[None], 3, axis=0))


def test_store_decodes_once_and_caches(pairs: Path, tmp_path: Path):
    folder = dataset.find_list_folder(pairs)
    samples = dataset.load_labeled(folder, pairs, dataset.subject_names(folder))
    cache = tmp_path / "cache"
    store = dataset.ImageStore(samples, 8, cache_dir=cache, progress=False)
    rgb, depth = store.batch(torch.tensor([0, 4]))
    assert rgb.shape == (2, 3, 8, 8) and depth.shape == (2, 1, 8, 8)
    assert torch.allclose(rgb[1], torch.full((3, 8, 8), 160 / 255))
    assert torch.allclose(depth[1], torch.full((1, 8, 8), 200 / 255))
    files = sorted(p.name for p in cache.iterdir())
    again = dataset.ImageStore(samples, 8, cache_dir=cache, progress=False)
    assert isinstance(again.rgb, np.memmap)
    assert sorted(p.name for p in cache.iterdir()) == files
    write_rgb(samples[4].rgb_path, 7)
    os.utime(samples[4].rgb_path, ns=(1, 1))
    fresh = dataset.ImageStore(samples, 8, cache_dir=cache, progress=False)
    assert fresh.rgb[4].max() == 7


def test_unreadable_image_names_list_line(pairs: Path):
    folder = dataset.find_list_folder(pairs)
    samples = dataset.load_split(folder, pairs, "spNO7", "test")
    samples[1].rgb_path.write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"spNO7_test.txt:2: cannot read image"):
        dataset.ImageStore(samples, 8, progress=False)


def test_pool_threshold_and_fallback(pairs: Path, capsys):
    folder = dataset.find_list_folder(pairs)
    pool = dataset.load_pool(folder, pairs)
    assert len(pool) == 5 and "using the 5 labeled samples" in capsys.readouterr().out
    kept = dataset.load_pool(folder, pairs, intensity_threshold=0.2)
    assert sorted(s.intensity for s in kept) == [0.2, 0.3, 0.4]
    assert "kept 3 pairs, dropped 2" in capsys.readouterr().out
    for spelling in ("spNO.7", "spNO7", "spno7"):
        rest = dataset.load_pool(folder, pairs, exclude_subjects=[spelling])
        assert {s.subject for s in rest} == {"spNO1"}
    with pytest.raises(UserError, match=r"subName.txt: --exclude_subjects spNO8: no such subject \(known: spNO1, spNO7\)"):
        dataset.load_pool(folder, pairs, exclude_subjects=["spNO.8", "spNO.7"])


def test_list_text_byte_order_mark_and_bad_bytes(pairs: Path, tmp_path: Path):
    lst = tmp_path / "bom.txt"
    lst.write_bytes(b"\xef\xbb\xbfimgs/spNO.1-a-11-spNO.1-a-1_diff.png 1 0\r\n# \xe2\x9c\x93 checked\r\n")
    assert [e.label for e in dataset.read_list(lst, pairs)] == [1]
    lst.write_bytes(lst.read_bytes() + b"imgs/x\xff.png 1 0\n")
    with pytest.raises(UserError, match=r"bom.txt:3: byte 0xff is not UTF-8"):
        dataset.read_list(lst, pairs)


def _augment(train: bool, **kw) -> dataset.PairAugment:
    return dataset.PairAugment(64, train, (0, 0, 0), (1, 1, 1), 0.0, 1.0, **kw)


def test_eval_transform_is_exact_centre_crop_for_both_views():
    rgb, depth = torch.rand(3, 3, 72, 72), torch.rand(3, 1, 72, 72)
    x = _augment(False)(rgb, depth)
    assert torch.allclose(x[:, :3], rgb[:, :, 4:68, 4:68], atol=1e-5)
    assert torch.allclose(x[:, 3:], depth[:, :, 4:68, 4:68], atol=1e-5)


def test_geometric_draw_shared_by_both_views():
    rgb = torch.rand(16, 3, 72, 72)
    x = _augment(True, crop_low=0.2)(rgb, rgb[:, :1].clone())
    assert torch.allclose(x[:, 0], x[:, 3], atol=1e-6)
    # photometric jitter is per view: the views differ, the geometry still agrees
    gray = rgb[:, :1].expand(-1, 3, -1, -1) * 0.5 + 0.25
    y = _augment(True, crop_low=0.2, jitter=0.4)(gray, gray[:, :1].clone())
    assert not torch.allclose(y[:, 0], y[:, 3], atol=1e-3)
    for a, b in zip(y[:, 0], y[:, 3]):  # per-sample affine changes only: same pixels, same places
        assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99


def test_photometric_jitter_matches_per_sample_reference():
    """The in-place batched jitter against the per-pixel formulas, with the same random draws."""
    rgb = torch.rand(12, 3, 8, 8)
    out = rgb.clone()
    aug = _augment(True, jitter=0.6, grayscale_p=0.5)
    _, *rgb_factors, _ = aug._draw(12, 8, True, torch.Generator().manual_seed(3), out.device)
    aug._jitter_rgb_(out, *rgb_factors, aug._device_constants(out.device)[2])
    draws = torch.Generator().manual_seed(3)
    aug.crop_theta(12, 8, draws)  # the crop is drawn first
    amplitude = torch.empty(12).uniform_(0.4, 1.6, generator=draws)
    saturation = torch.empty(12).uniform_(0.4, 1.6, generator=draws)
    to_gray = torch.rand(12, generator=draws) < 0.5
    assert 0 < to_gray.sum() < 12
    for i in range(12):
        changed = ((rgb[i] - 0.5) * amplitude[i] + 0.5).clamp(0, 1)
        luma = 0.299 * changed[0] + 0.587 * changed[1] + 0.114 * changed[2]
        expected = ((changed - luma) * saturation[i] + luma).clamp(0, 1)
        if to_gray[i]:
            expected = (0.299 * expected[0] + 0.587 * expected[1] + 0.114 * expected[2]).expand(3, -1, -1)
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-6)
    depth = torch.rand(12, 1, 8, 8)
    scaled = depth.clone()
    dataset._amplitude_(scaled, aug._draw(12, 8, True, torch.Generator().manual_seed(4), depth.device)[4])
    draws = torch.Generator().manual_seed(4)
    aug.crop_theta(12, 8, draws)
    torch.empty(24).uniform_(0.4, 1.6, generator=draws)  # RGB amplitude and saturation
    torch.rand(12, generator=draws)  # grayscale
    factor = torch.empty(12).uniform_(0.4, 1.6, generator=draws).view(-1, 1, 1, 1)
    torch.testing.assert_close(scaled, ((depth - 0.5) * factor + 0.5).clamp(0, 1), rtol=0, atol=1e-6)


def test_crop_statistics_match_random_resized_crop():
    torch.manual_seed(0)
    theta = _augment(True, crop_low=0.2).crop_theta(20000, 72)
    width, height = theta[:, 0, 0].abs(), theta[:, 1, 1]
    area = width * height
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 1 + 1e-6
    assert (width <= 1).all() and (height <= 1).all()
    ratio = width / height
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    assert abs((theta[:, 0, 0] < 0).float().mean().item() - 0.5) < 0.02
    # the box stays inside the image
    assert ((theta[:, 0, 2].abs() + width) <= 1 + 1e-6).all()
    # the same area distribution as torchvision's per-sample RandomResizedCrop
    from torchvision.transforms import RandomResizedCrop
    image = torch.zeros(1, 720, 720)
    boxes = [RandomResizedCrop.get_params(image, (0.2, 1.0), (3 / 4, 4 / 3)) for _ in range(5000)]
    reference = torch.tensor([h * w / 720**2 for _, _, h, w in boxes])
    assert abs(area.mean().item() - reference.mean().item()) < 0.01
    assert abs(area.std().item() - reference.std().item()) < 0.01
