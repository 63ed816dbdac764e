import logging

import numpy as np
import pytest
from PIL import Image

from musc.errors import ImageReadError, InputError
from musc.io import atomic_write_text, find_images, output_name, read_image, to_rgb


@pytest.mark.parametrize("mode,arr", [
    ("L", np.full((4, 5), 100, np.uint8)),
    ("RGBA", np.dstack([np.full((4, 5, 3), 200, np.uint8), np.full((4, 5), 255, np.uint8)])),
    ("I;16", np.full((4, 5), 65535, np.uint16)),
    ("F", np.full((4, 5), 0.5, np.float32)),
])
def test_to_rgb_modes(mode, arr):
    img = Image.fromarray(arr, mode=mode) if mode != "I;16" else Image.fromarray(arr)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (5, 4)
    expected = {"L": 100, "RGBA": 200, "I;16": 255, "F": 128}[mode]
    assert abs(int(np.asarray(out)[0, 0, 0]) - expected) <= 1


def test_transparent_pixels_become_black():
    arr = np.full((2, 2, 4), 200, np.uint8)
    arr[..., 3] = 255
    arr[0, 0, 3] = 0
    out = np.asarray(to_rgb(Image.fromarray(arr, mode="RGBA")))
    assert out[0, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [200, 200, 200]


def test_16bit_png_read(tmp_path):
    arr = np.full((6, 6), 32768, np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert abs(int(np.asarray(read_image(tmp_path / "a.png"))[0, 0, 0]) - 128) <= 1


def test_corrupt_and_missing_images(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    good = tmp_path / "t.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="trunc.jpg"):
        read_image(tmp_path / "trunc.jpg")


def test_find_images(tmp_path):
    with pytest.raises(InputError, match="not found"):
        find_images(tmp_path / "missing")
    with pytest.raises(InputError, match="no images"):
        find_images(tmp_path)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(InputError, match="not a folder"):
        find_images(tmp_path / "file.png")
    (tmp_path / "file.png").unlink()
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for p in ["b.PNG", "sub/a.jpg", ".hidden/c.png", "notes.txt"]:
        (tmp_path / p).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["b.PNG", "sub/a.jpg"]
    assert [p.name for p in find_images(tmp_path, recursive=False)] == ["b.PNG"]


def test_find_images_says_what_it_left_out(tmp_path, caplog):
    for p in ["a.png", "b.pgm", "c.gif", "d.GIF", "labels.txt", "README", ".hidden.gif"]:
        (tmp_path / p).write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="musc"):
        found = find_images(tmp_path)
    assert [p.name for p in found] == ["a.png", "b.pgm"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1 and "left out 2 file(s)" in warnings[0] and ".gif: 2" in warnings[0]
    assert len(infos) == 1 and "(no extension): 1" in infos[0] and ".txt: 1" in infos[0]
    caplog.clear()
    only_images = tmp_path / "only"
    only_images.mkdir()
    (only_images / "a.png").write_bytes(b"x")
    find_images(only_images)
    assert not caplog.records


def test_read_image_reads_netpbm(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(gray).save(tmp_path / "g.pgm")
    rgb = read_image(tmp_path / "g.pgm")
    assert rgb.mode == "RGB" and rgb.size == (8, 6)
    assert np.array_equal(np.asarray(rgb)[..., 0], gray)


def test_output_name_is_unique_per_relative_path(tmp_path):
    assert output_name(tmp_path / "a" / "x.png", tmp_path) == "a__x"
    assert output_name(tmp_path / "b" / "x.png", tmp_path) == "b__x"


def test_atomic_write_keeps_old_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "scores.csv"
    atomic_write_text(target, "old\n")
    import musc.io as mio

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(mio.os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_low_bit_depth_16_bit_images_are_named_once(tmp_path, caplog):
    from musc.io import warn_once

    warn_once.cache_clear()
    twelve_bit = np.full((4, 5), 4095, np.uint16)
    with caplog.at_level(logging.WARNING, logger="musc"):
        for _ in range(3):
            out = np.asarray(to_rgb(Image.fromarray(twelve_bit)))
    assert out.max() == 16  # 4095 / 257: the loss the warning names
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "12 of its 16 bits" in caplog.records[0].getMessage()
    warn_once.cache_clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="musc"):
        to_rgb(Image.fromarray(np.full((4, 5), 60000, np.uint16)))
    assert not caplog.records
    warn_once.cache_clear()


def _rotated_photo(path, orientation: int = 6) -> None:
    """A 40 x 20 stored image, bright in its stored top-left corner, whose EXIF tag says how to turn it."""
    arr = np.full((20, 40), 30, dtype=np.uint8)
    arr[:8, :8] = 250
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif, quality=95)


def test_photos_are_read_upright(tmp_path):
    """Orientation 6 (turn 90 degrees clockwise to view): stored 40 x 20 is viewed 20 x 40, and the stored top-left
    corner is the viewed top-right one. Sizes from headers (tiles, masks' size check) say the same."""
    from musc.io import upright_size
    from musc.tiling import image_sizes

    _rotated_photo(tmp_path / "phone.jpg")
    img = np.asarray(read_image(tmp_path / "phone.jpg"))[..., 0]
    assert img.shape == (40, 20)
    assert img[:8, -8:].mean() > 200 and img[-8:, :8].mean() < 60 and img[:8, :8].mean() < 60
    assert image_sizes([tmp_path / "phone.jpg"]) == [(20, 40)]
    with Image.open(tmp_path / "phone.jpg") as raw:
        assert raw.size == (40, 20) and upright_size(raw) == (20, 40)
        assert to_rgb(raw).size == (40, 20)  # to_rgb converts only; reading (or MuSc's inputs) turns
    _rotated_photo(tmp_path / "mirrored.jpg", orientation=2)  # a mirror keeps the size
    assert image_sizes([tmp_path / "mirrored.jpg"]) == [(40, 20)]
    assert np.asarray(read_image(tmp_path / "mirrored.jpg"))[:8, -8:, 0].mean() > 200


def test_exclude_patterns_match_the_name_or_the_path_below_the_folder(tmp_path):
    from musc.io import excluded

    for rel in ("a.png", "a_label.png", "sub/b.png", "sub/b_label.png", "ground_truth/x/c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    names = lambda paths: sorted(p.relative_to(tmp_path).as_posix() for p in paths)
    assert names(find_images(tmp_path, exclude=["*_label*"])) == ["a.png", "ground_truth/x/c.png", "sub/b.png"]
    assert names(find_images(tmp_path, exclude=["ground_truth/*", "sub/*"])) == ["a.png", "a_label.png"]
    assert names(find_images(tmp_path, exclude=["b.png"])) == ["a.png", "a_label.png", "ground_truth/x/c.png",
                                                              "sub/b_label.png"]  # a bare name matches in any folder
    assert len(find_images(tmp_path, recursive=False, exclude=["*_label*"])) == 1
    assert excluded(tmp_path / "Part0_label.png", None, ["*_label*"])  # a file given alone: its name
    assert not excluded(tmp_path / "Part0.png", None, ["*_label*"])
    with pytest.raises(InputError, match=r"no images left in .*: all 5 match --exclude \*"):
        find_images(tmp_path, exclude=["*"])


def test_masks_are_found_by_their_pixels_and_their_names_give_the_pattern_that_leaves_them_out(tmp_path):
    from musc.io import excluded, ground_truth_like

    paths = [tmp_path / rel for rel in ("kos01/Part0.jpg", "kos01/Part0_label.png", "kos02/Part1_LABEL.bmp",
                                        "test/crack/000.png", "ground_truth/crack/000_mask.png")]
    masks = [paths[1], paths[2], paths[4]]
    found, pattern = ground_truth_like(paths, tmp_path, masks)
    assert found == masks and pattern == "*_label*" and excluded(paths[1], tmp_path, [pattern])
    found, pattern = ground_truth_like(paths[3:], tmp_path, masks)  # its name and its folder say so: the name's
    assert found == paths[4:] and pattern == "*_mask*"
    folder_mask = tmp_path / "Masks" / "a.png"
    found, pattern = ground_truth_like([folder_mask, tmp_path / "good" / "b.png"], tmp_path, [folder_mask])
    assert found == [folder_mask] and pattern == "*Masks/*" and excluded(folder_mask, tmp_path, [pattern])
    labels = [tmp_path / "bottle_label.jpg", tmp_path / "ground_truth" / "a.png"]  # photos named so: pixels decide
    assert ground_truth_like(labels, tmp_path, []) == ([], None)


def test_masks_are_told_from_photos_by_their_pixels_and_their_extension_leaves_them_out(tmp_path):
    from musc.io import ground_truth_like, mask_like

    from conftest import textured

    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:30] = 255
    mask[19, 10:30] = 128  # an antialiased edge
    assert mask_like(Image.fromarray(mask)) and mask_like(Image.fromarray((mask > 0).astype(np.uint8)))  # 0/255, 0/1
    assert mask_like(Image.new("L", (8, 8)))  # all black: the mask of a normal image
    assert not mask_like(Image.fromarray(textured(0))) and not mask_like(Image.fromarray(textured(1)).convert("L"))
    photos = [tmp_path / f"exp{i}.jpg" for i in range(3)]
    masks = [tmp_path / f"exp{i}.png" for i in range(3)]  # Magnetic Tile Defect: each mask beside its photo
    found, pattern = ground_truth_like(photos + masks, tmp_path, masks)
    assert found == masks and pattern == "*.png"
    found, pattern = ground_truth_like(photos + masks + [tmp_path / "other.png"], tmp_path, masks[:1])
    assert found == masks[:1] and pattern == "exp0.png"  # photos share the extension: the file itself


def test_earlier_musc_results_inside_the_image_folder_are_left_out(tmp_path, caplog):
    import json

    for rel in ("a.png", "sub/b.png", "results/heatmaps/a.png", "results/masks/a.png", "other/results2/overlays/b.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    (tmp_path / "results" / "config.json").write_text(json.dumps({"musc_version": "0", "config": {}}))
    (tmp_path / "other" / "results2" / "scores.csv").write_text("rank,path,score\n")
    with caplog.at_level(logging.WARNING, logger="musc"):
        found = find_images(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in found) == ["a.png", "sub/b.png"]
    assert "2 earlier musc result folder(s)" in caplog.text and "other/results2, results" in caplog.text
    with pytest.raises(InputError, match="outside earlier musc results"):
        find_images(tmp_path / "other")
    assert len(find_images(tmp_path / "results")) == 2  # a result folder given itself is taken as asked
