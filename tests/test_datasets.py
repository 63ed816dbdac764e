import numpy as np
import pytest
from PIL import Image

from musc.datasets import ANOMALOUS, NORMAL, get_reader, load_mask, resize_mask
from musc.errors import DatasetError

from conftest import MTD_ROOT
from synthetic_data import LAYOUTS, SIZE, SQUARE, make_dataset

EXPECTED = {  # layout -> (categories, normal test images, anomalous test images, train normals) of the first category
    "mvtec_ad": (["cat_a", "cat_b"], 5, 2, 3), "mpdd": (["cat_a", "cat_b"], 5, 2, 3),
    "mvtec_ad2": (["cat_a", "cat_b"], 5, 2, 3),
    "visa": (["cat_a", "cat_b"], 5, 2, 2), "btad": (["01", "02"], 5, 2, 2), "mvtec_3d": (["cat_a"], 5, 2, 2),
    "mvtec_loco": (["cat_a"], 5, 4, 2), "mtd": (["magnetic_tile"], 5, 4, 0),
    "ksdd": (["kolektor"], 6, 2, 0), "folder": (["data"], 5, 2, 0),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reader_finds_samples_labels_and_masks(layout, tmp_path):
    root = make_dataset(layout, tmp_path / "data")
    reader = get_reader(layout)
    cats, n_norm, n_anom, n_train = EXPECTED[layout]
    assert reader.categories(root) == cats
    category = reader.load(root, cats[0])
    labels = category.labels
    assert (labels == NORMAL).sum() == n_norm and (labels == ANOMALOUS).sum() == n_anom
    assert len(category.train_normals) == n_train
    assert category.check() == []
    expected = np.zeros((SIZE, SIZE), bool)
    expected[SQUARE["top"]:SQUARE["top"] + SQUARE["side"], SQUARE["left"]:SQUARE["left"] + SQUARE["side"]] = True
    for s in category.samples:
        assert s.path.is_file()
        mask = load_mask(s, Image.open(s.path).size)
        if s.label == ANOMALOUS:
            assert np.array_equal(mask, expected), (layout, s)
        else:
            assert not mask.any()


def test_ksdd_missing_label_is_named(tmp_path):
    root = make_dataset("ksdd", tmp_path / "data")
    (root / "kos01" / "Part0_label.png").unlink()
    with pytest.raises(DatasetError, match="no label Part0_label.png or .bmp"):
        get_reader("ksdd").load(root)


@pytest.mark.skipif(not (MTD_ROOT.parent / "ksdd").is_dir(), reason="../shared/datasets/ksdd not present")
def test_real_ksdd_counts():
    category = get_reader("ksdd").load(MTD_ROOT.parent / "ksdd")
    assert len(category.samples) == 200 and int(category.labels.sum()) == 25
    assert category.check() == []


def test_loco_mask_is_union_of_parts(tmp_path):
    root = make_dataset("mvtec_loco", tmp_path / "d")
    s = next(s for s in get_reader("mvtec_loco").load(root, "cat_a").samples if s.label == ANOMALOUS)
    assert len(s.mask_paths) == 2
    assert s.defect_type in ("logical_anomalies", "structural_anomalies")


def test_missing_mask_for_anomalous_image_is_reported(tmp_path):
    root = make_dataset("mvtec_ad", tmp_path / "d")
    (root / "cat_a" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match="1 anomalous image\\(s\\) have no mask.*001.png"):
        get_reader("mvtec_ad").load(root, "cat_a").check()


def test_mask_of_other_size_is_reported(tmp_path):
    root = make_dataset("btad", tmp_path / "d")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "01" / "ground_truth" / "ko" / "0000.png")
    s = next(s for s in get_reader("btad").load(root, "01").samples if s.label == ANOMALOUS)
    with pytest.raises(DatasetError, match="is 10x10 but its image .* is 56x56"):
        load_mask(s, (SIZE, SIZE))


def test_category_without_anomalies_or_normals(tmp_path):
    root = make_dataset("mvtec_ad", tmp_path / "d")
    import shutil

    shutil.rmtree(root / "cat_a" / "test" / "scratch")
    notes = get_reader("mvtec_ad").load(root, "cat_a").check()
    assert any("no anomalous test image" in n for n in notes)
    shutil.rmtree(root / "cat_b" / "test" / "good")
    notes = get_reader("mvtec_ad").load(root, "cat_b").check()
    assert any("no normal test image" in n for n in notes)


def test_folder_without_masks_has_undefined_pixel_metrics(tmp_path):
    root = make_dataset("folder", tmp_path / "d")
    import shutil

    shutil.rmtree(root / "masks")
    notes = get_reader("folder").load(root).check()
    assert any("pixel-level metrics are undefined" in n for n in notes)


def test_bad_roots_and_names(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset layout"):
        get_reader("imagenet")
    with pytest.raises(DatasetError, match="root not found"):
        get_reader("mvtec_ad").categories(tmp_path / "nope")
    root = make_dataset("mvtec_ad", tmp_path / "d")
    with pytest.raises(DatasetError, match="no category 'zzz'.*cat_a"):
        get_reader("mvtec_ad").load(root, "zzz")
    with pytest.raises(DatasetError, match="split file not found"):
        get_reader("visa").categories(tmp_path)
    with pytest.raises(DatasetError, match="no MT_"):
        get_reader("mtd").categories(tmp_path)


def test_resize_mask_nearest():
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True
    r = resize_mask(m, 8)
    assert r.shape == (8, 8) and r[:4, :4].all() and not r[4:].any()


@pytest.mark.skipif(not MTD_ROOT.is_dir(), reason="../shared/datasets/mtd is not present")
def test_real_mtd_layout():
    category = get_reader("mtd").load(MTD_ROOT)
    assert len(category.samples) == 1344
    assert int(category.labels.sum()) == 392
    assert category.check() == []
    crack = next(s for s in category.samples if s.defect_type == "Crack")
    mask = load_mask(crack, Image.open(crack.path).size)
    assert mask.any() and mask.mean() < 0.5


def test_broken_ground_truth_is_named(tmp_path):
    from musc.datasets import Category, Sample

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    with pytest.raises(DatasetError, match="no mask and no image size"):
        load_mask(Sample(image, ANOMALOUS, "crack"))
    (tmp_path / "bad_mask.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="cannot read mask .*bad_mask.png"):
        load_mask(Sample(image, ANOMALOUS, "crack", (tmp_path / "bad_mask.png",)))
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "m1.png")
    Image.fromarray(np.full((4, 8), 255, np.uint8)).save(tmp_path / "m2.png")
    with pytest.raises(DatasetError, match="mask parts of .* differ in size"):
        load_mask(Sample(image, ANOMALOUS, "crack", (tmp_path / "m1.png", tmp_path / "m2.png")))
    with pytest.raises(DatasetError, match="category 'empty' has no test images"):
        Category("empty", []).check()


def test_roots_a_reader_cannot_use(tmp_path):
    (tmp_path / "visa" / "split_csv").mkdir(parents=True)
    (tmp_path / "visa" / "split_csv" / "1cls.csv").write_text("object,split,image\ncandle,test,a.png\n")
    with pytest.raises(DatasetError, match="visa: .*1cls.csv must have columns image, label, mask, object, split"):
        get_reader("visa").categories(tmp_path / "visa")
    (tmp_path / "ksdd" / "kos01").mkdir(parents=True)
    with pytest.raises(DatasetError, match="ksdd: no folders with Part\\*.jpg images in"):
        get_reader("ksdd").categories(tmp_path / "ksdd")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="folder: .* must contain normal/ and/or anomalous/"):
        get_reader("folder").categories(tmp_path / "plain")
    (tmp_path / "plain" / "normal").mkdir()
    with pytest.raises(DatasetError, match="the only category is 'plain', not 'other'"):
        get_reader("folder").load(tmp_path / "plain", "other")


def test_a_mask_with_an_orientation_tag_is_read_upright_like_its_image(tmp_path):
    """Images are read as a viewer shows them (EXIF orientation applied), and so are masks: both stay aligned."""
    from musc.datasets import Sample

    stored = np.zeros((20, 40), dtype=np.uint8)
    stored[:8, :8] = 255  # stored top-left; orientation 6 shows it top-right
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "mask.png", exif=exif)
    mask = load_mask(Sample(tmp_path / "img.png", ANOMALOUS, "crack", (tmp_path / "mask.png",)), (20, 40))
    assert mask.shape == (40, 20)
    assert mask[:8, -8:].all() and mask.sum() == 64
