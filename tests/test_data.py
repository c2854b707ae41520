"""Tests for clipclean.data: every source, the digits splits, and each kind of bad input."""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipclean.data import (
    DIGIT_CAPTION_TEMPLATES,
    DIGIT_CLASSNAMES,
    ClassificationDataset,
    DataError,
    ImageCaptionDataset,
    collate_pairs,
    digits_split_indices,
    load_classification_dataset,
    load_image_caption_dataset,
    pixel_transform,
)

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def _save_image(path, color=(255, 0, 0), size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color=color).save(path)
    return path


def _write_corrupt(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image at all")
    return path


def _assert_pixels(image, size=(32, 32)):
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert tuple(image.shape) == (3, *size)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


@pytest.fixture
def caption_csv(tmp_path):
    """captions.csv (CleanCLIP format, mixed-case header) next to an images/ folder of 3 files."""
    for i in range(3):
        _save_image(tmp_path / "images" / f"{i}.png", COLORS[i])
    lines = ["Image,Caption", "images/0.png,a red square.", "images/1.png,a green square.", "images/2.png,a blue one."]
    (tmp_path / "captions.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "captions.csv"


# ---------------------------------------------------------------------------------------------------------------
# Pixels and collation
# ---------------------------------------------------------------------------------------------------------------


def test_pixel_transform_resizes_crops_and_keeps_unit_range():
    transform = pixel_transform(32)
    image = transform(Image.new("L", (64, 48), color=255))  # greyscale, non-square
    _assert_pixels(image)
    assert torch.allclose(image, torch.ones_like(image))
    rectangular = pixel_transform((16, 24))(Image.new("RGB", (10, 10), color=(0, 0, 255)))
    _assert_pixels(rectangular, (16, 24))
    assert torch.allclose(rectangular[2], torch.ones(16, 24)) and float(rectangular[:2].max()) == 0.0


def test_pixel_transform_center_crops_the_longer_side():
    image = Image.new("RGB", (30, 10), color=(0, 0, 0))
    image.paste((255, 255, 255), (10, 0, 20, 10))  # white middle third survives the center crop
    assert torch.allclose(pixel_transform(10)(image), torch.ones(3, 10, 10))


def test_collate_pairs_captions_and_labels():
    images, captions = collate_pairs([(torch.zeros(3, 4, 4), "a"), (torch.ones(3, 4, 4), "b")])
    assert images.shape == (2, 3, 4, 4) and captions == ["a", "b"]
    images, labels = collate_pairs([(torch.zeros(3, 4, 4), 3), (torch.ones(3, 4, 4), np.int64(7))])
    assert labels.dtype == torch.long and labels.tolist() == [3, 7]


# ---------------------------------------------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------------------------------------------


def test_digits_split_indices_are_disjoint_sized_and_deterministic():
    splits = digits_split_indices()
    assert {name: len(idx) for name, idx in splits.items()} == {"train": 1097, "defender": 300, "test": 400}
    union = np.concatenate(list(splits.values()))
    assert len(np.unique(union)) == 1797 and union.min() == 0 and union.max() == 1796
    again = digits_split_indices(0)
    assert all(np.array_equal(splits[name], again[name]) for name in splits)
    assert not np.array_equal(splits["test"], digits_split_indices(1)["test"])


def test_digits_image_caption_dataset():
    dataset = load_image_caption_dataset("digits:defender", image_size=32)
    assert isinstance(dataset, ImageCaptionDataset) and len(dataset) == 300
    assert dataset.classnames == DIGIT_CLASSNAMES and dataset.image_size == (32, 32)
    assert dataset.source == "digits:defender"
    for i in (0, 1, 299):
        image, caption = dataset[i]
        _assert_pixels(image)
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
        assert DIGIT_CLASSNAMES[dataset.labels[i]] in caption and caption == dataset.captions[i]
    assert float(dataset[0][0].max()) > 0.5  # real ink, not blank
    assert {caption.replace(DIGIT_CLASSNAMES[y], "{}") for caption, y in zip(dataset.captions, dataset.labels)} == set(
        DIGIT_CAPTION_TEMPLATES
    )
    assert load_image_caption_dataset("digits", split="defender").captions == dataset.captions  # deterministic
    assert len(load_image_caption_dataset("digits")) == 1097  # default split: train


def test_digits_returned_images_are_independent_copies():
    dataset = load_image_caption_dataset("digits:test", image_size=16)
    image = dataset[0][0]
    _assert_pixels(image, (16, 16))
    image.zero_()
    assert float(dataset[0][0].max()) > 0.0


def test_digits_classification_dataset():
    dataset = load_classification_dataset("digits", image_size=24)
    assert isinstance(dataset, ClassificationDataset) and len(dataset) == 400  # default split: test
    assert dataset.classnames == DIGIT_CLASSNAMES and sorted(set(dataset.labels)) == list(range(10))
    _assert_pixels(dataset[5][0], (24, 24))
    captions = load_image_caption_dataset("digits:test", image_size=24)
    assert torch.equal(dataset[5][0], captions[5][0]) and dataset.labels == captions.labels
    images, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_pairs)))
    assert images.shape == (8, 3, 24, 24) and labels.dtype == torch.long


def test_digits_rejects_unknown_or_conflicting_split():
    with pytest.raises(DataError, match="unknown digits split 'val'"):
        load_image_caption_dataset("digits:val")
    with pytest.raises(DataError, match="conflicting"):
        load_classification_dataset("digits:test", split="train")


# ---------------------------------------------------------------------------------------------------------------
# Image-caption files
# ---------------------------------------------------------------------------------------------------------------


def test_csv_source_with_relative_paths(caption_csv):
    dataset = load_image_caption_dataset(str(caption_csv), image_size=16)
    assert len(dataset) == 3 and dataset.labels is None and dataset.classnames is None
    assert dataset.captions == ["a red square.", "a green square.", "a blue one."]
    image, caption = dataset[1]
    _assert_pixels(image, (16, 16))
    assert caption == "a green square." and torch.allclose(image[1], torch.ones(16, 16))
    images, captions = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_pairs)))
    assert images.shape == (3, 3, 16, 16) and captions == dataset.captions


def test_tsv_source_with_other_column_names_and_absolute_paths(tmp_path):
    path = _save_image(tmp_path / "a" / "x.jpg", COLORS[2])
    (tmp_path / "pairs.tsv").write_text(f"id\tfilepath\ttitle\n7\t{path}\ta blue, square thing\n")
    dataset = load_image_caption_dataset(str(tmp_path / "pairs.tsv"))
    assert dataset.captions == ["a blue, square thing"]
    _assert_pixels(dataset[0][0])


def test_csv_explicit_columns(tmp_path):
    _save_image(tmp_path / "one.png")
    (tmp_path / "c.csv").write_text("img,alt,text\none.png,the alt text,other text\n")
    dataset = load_image_caption_dataset(str(tmp_path / "c.csv"), image_column="IMG", caption_column="alt")
    assert dataset.captions == ["the alt text"]
    with pytest.raises(DataError, match=r"c\.csv: no image column"):
        load_image_caption_dataset(str(tmp_path / "c.csv"))
    with pytest.raises(DataError, match="no caption column 'missing'"):
        load_image_caption_dataset(str(tmp_path / "c.csv"), image_column="img", caption_column="missing")


def test_imagefolder_metadata_jsonl(tmp_path):
    for i in range(2):
        _save_image(tmp_path / f"{i}.png", COLORS[i])
    records = [{"file_name": "0.png", "text": "red"}, {"file_name": "1.png", "text": "green"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    dataset = load_image_caption_dataset(str(tmp_path), image_size=8)
    assert dataset.captions == ["red", "green"]
    _assert_pixels(dataset[1][0], (8, 8))


def test_imagefolder_metadata_csv_in_split_folder(tmp_path):
    _save_image(tmp_path / "test" / "imgs" / "q.webp", COLORS[3])
    (tmp_path / "test" / "metadata.csv").write_text("file_name,caption\nimgs/q.webp,a white square\n")
    dataset = load_image_caption_dataset(str(tmp_path), split="test")
    assert dataset.captions == ["a white square"]
    assert torch.allclose(dataset[0][0], torch.ones(3, 32, 32))


def _hf_dataset(tmp_path, n=4):
    import datasets

    images = [Image.new("RGB", (9, 7), color=COLORS[i % len(COLORS)]) for i in range(n)]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    return datasets.Dataset.from_dict({"image": images, "caption": [f"colour {i}" for i in range(n)]}, features)


def test_save_to_disk_dataset(tmp_path):
    _hf_dataset(tmp_path).save_to_disk(str(tmp_path / "hf"))
    dataset = load_image_caption_dataset(str(tmp_path / "hf"), image_size=16)
    assert len(dataset) == 4 and dataset.captions == [f"colour {i}" for i in range(4)]
    image, caption = dataset[2]
    _assert_pixels(image, (16, 16))
    assert caption == "colour 2" and torch.allclose(image[2], torch.ones(16, 16))  # blue


def test_save_to_disk_dataset_dict_split_and_path_column(tmp_path):
    import datasets

    _save_image(tmp_path / "hf" / "p.png", COLORS[1])
    paths = datasets.Dataset.from_dict({"path": ["p.png"], "text": ["green from a path"]})
    datasets.DatasetDict(train=_hf_dataset(tmp_path, n=2), test=paths).save_to_disk(str(tmp_path / "hf"))
    assert len(load_image_caption_dataset(str(tmp_path / "hf"))) == 2  # default split: train
    dataset = load_image_caption_dataset(str(tmp_path / "hf"), split="test")
    assert dataset.captions == ["green from a path"]
    assert torch.allclose(dataset[0][0][1], torch.ones(32, 32))
    with pytest.raises(DataError, match="no split 'validation'"):
        load_image_caption_dataset(str(tmp_path / "hf"), split="validation")


def test_unknown_source_raises(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_image_caption_dataset(str(tmp_path / "nowhere.csv"))
    with pytest.raises(DataError, match="not an image-caption folder"):
        load_image_caption_dataset(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# Class folders
# ---------------------------------------------------------------------------------------------------------------


def test_imagenet_synset_folders_map_to_openai_classnames(tmp_path):
    _save_image(tmp_path / "val" / "n01443537" / "b.JPEG", COLORS[1])
    _save_image(tmp_path / "val" / "n01440764" / "a.jpeg", COLORS[0])
    _save_image(tmp_path / "val" / "n01440764" / "nested" / "c.PNG", COLORS[0])
    (tmp_path / "val" / "n01440764" / "notes.txt").write_text("not an image")
    dataset = load_classification_dataset(str(tmp_path), split="val", image_size=16)
    assert dataset.classnames == ["tench", "goldfish"]
    assert dataset.labels == [0, 0, 1] and len(dataset) == 3
    image, label = dataset[2]
    _assert_pixels(image, (16, 16))
    assert label == 1 and torch.allclose(image[1], torch.ones(16, 16))


def test_plain_class_folders_use_folder_names(tmp_path):
    _save_image(tmp_path / "hot_dog" / "1.bmp")
    _save_image(tmp_path / "apple" / "1.gif")
    dataset = load_classification_dataset(str(tmp_path))
    assert dataset.classnames == ["apple", "hot dog"] and dataset.labels == [0, 1]


@pytest.mark.parametrize(
    "lines, expected",
    [
        (["a cat", "a dog, probably"], ["a cat", "a dog, probably"]),  # one name per line, folder order
        (["dogs\tdog", "cats\tcat"], ["cat", "dog"]),  # folder<TAB>name, any order
        (["cats,kitty, cat", "dogs,doggo"], ["kitty, cat", "doggo"]),  # folder,name
    ],
)
def test_classnames_file(tmp_path, lines, expected):
    for folder in ("cats", "dogs"):
        _save_image(tmp_path / "data" / folder / "x.png")
    (tmp_path / "names.txt").write_text("\n".join(lines) + "\n")
    dataset = load_classification_dataset(str(tmp_path / "data"), classnames=str(tmp_path / "names.txt"))
    assert dataset.classnames == expected


def test_classnames_list_and_count_mismatch(tmp_path):
    for folder in ("0", "1"):
        _save_image(tmp_path / folder / "x.png")
    assert load_classification_dataset(str(tmp_path), classnames=["zero", "one"]).classnames == ["zero", "one"]
    (tmp_path.parent / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match=r"three\.txt: 3 class names for 2 classes"):
        load_classification_dataset(str(tmp_path), classnames=str(tmp_path.parent / "three.txt"))


NATURAL = ["zero", "one", "two", "three"]  # folders sort as one, three, two, zero


def _natural_folders(root):
    for label, folder in enumerate(NATURAL):
        _save_image(root / "data" / folder / "x.png", COLORS[label])
    return root / "data"


def _names_file(root, lines):
    (root / "names.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(root / "names.txt")


@pytest.mark.parametrize("order", [NATURAL, list(reversed(NATURAL)), sorted(NATURAL)])
def test_classnames_file_of_the_folder_names_keeps_each_folder_its_own_name(tmp_path, order):
    data = _natural_folders(tmp_path)
    dataset = load_classification_dataset(str(data), classnames=_names_file(tmp_path, order))
    assert dataset.classnames == sorted(NATURAL)
    for index in range(len(dataset)):  # every image's class name is the folder it lies in
        assert dataset.classnames[dataset.labels[index]] == Path(dataset._location(index)).parent.name
    assert load_classification_dataset(str(data), classnames=NATURAL).classnames == sorted(NATURAL)  # a list too


def test_classnames_that_would_relabel_a_folder_are_refused_in_one_line(tmp_path):
    data = _natural_folders(tmp_path)
    names = _names_file(tmp_path, ["zero", "one", "two", "3"])  # not the folder names: given in sorted-folder order
    with pytest.raises(DataError, match=r"names\.txt line 1: 'zero' would name folder 'one' .*'folder<TAB>name'") as e:
        load_classification_dataset(str(data), classnames=names)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"classnames entry 1: 'one' would name folder 'three'"):
        load_classification_dataset(str(data), classnames=["3", "one", "zero", "two"])


def test_plain_names_go_to_the_folders_in_sorted_order_when_none_is_another_folders(tmp_path):
    data = _natural_folders(tmp_path)  # folders one, three, two, zero
    names = _names_file(tmp_path, ["uno", "three", "dos", "cero"])  # "three" is the second folder's own name
    assert load_classification_dataset(str(data), classnames=names).classnames == ["uno", "three", "dos", "cero"]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["one\tuno", "three\ttres", "two dos", "zero\tcero"], r"line 3: no TAB in 'two dos'"),
        (["one\tuno", "three\ttres", "two\tdos", "nul\tcero"], r"line 4: 'nul' is not a class folder"),
        (["one\tuno", "one\tun", "two\tdos", "zero\tcero"], r"line 2: folder 'one' is named twice"),
        (["one\tuno", "two\tdos", "zero\tcero"], r"no class name for folder\(s\) \['three'\]"),
        (["one\t", "three\ttres", "two\tdos", "zero\tcero"], r"empty class name for class 'one'"),
    ],
)
def test_bad_folder_tab_name_files(tmp_path, lines, message):
    data = _natural_folders(tmp_path)
    with pytest.raises(DataError, match=r"names\.txt.*" + message):
        load_classification_dataset(str(data), classnames=_names_file(tmp_path, lines))


@pytest.mark.parametrize(
    "classnames, message",
    [
        (["a", "b", "a", "c"], r"names\.txt: classes 'one' and 'two' are both named 'a'"),  # a file of plain names
        (["Cat", "dog", "cat ", "bird"], r"classes 'one' and 'two' are both named 'cat'"),  # case and spaces ignored
        (["one\tx", "three\tx", "two\ty", "zero\tz"], r"classes 'one' and 'three' are both named 'x'"),  # mapping
        ([["a", "", "b", "c"]], r"classnames: empty class name for class 'three'"),  # a list
    ],
)
def test_empty_or_duplicate_class_names_are_refused_in_one_line(tmp_path, classnames, message):
    data = _natural_folders(tmp_path)
    given = classnames[0] if isinstance(classnames[0], list) else _names_file(tmp_path, classnames)
    with pytest.raises(DataError, match=message) as e:
        load_classification_dataset(str(data), classnames=given)
    assert "\n" not in str(e.value)


def test_duplicate_names_from_folders_or_for_digits_are_refused(tmp_path):
    _save_image(tmp_path / "hot_dog" / "1.png")
    _save_image(tmp_path / "hot dog" / "1.png")
    with pytest.raises(DataError, match=r"classes 'hot dog' and 'hot_dog' are both named 'hot dog'"):
        load_classification_dataset(str(tmp_path))
    with pytest.raises(DataError, match=r"classnames: classes '0' and '1' are both named 'digit'"):
        load_classification_dataset("digits", classnames=["digit"] * 10)


def test_openai_synset_names_are_open_clips_and_kept_as_published(tmp_path):
    from clipclean.data.classnames import imagenet_synset_names

    table = imagenet_synset_names()
    # the (synset, name) table clipclean shipped as imagenet_classnames.json before it took the names from open_clip
    fingerprint = hashlib.sha256("\n".join(f"{s}\t{n}" for s, n in table.items()).encode()).hexdigest()
    assert fingerprint == "c2e6b3aab7524eace5b791b57862af87af14ca130ca7aa043d7d39986b59dea9"
    for synset in ("n03773504", "n04008634"):  # OpenAI named both "missile": the published protocol, not an error
        _save_image(tmp_path / synset / "x.png")
    assert load_classification_dataset(str(tmp_path)).classnames == ["missile", "missile"]


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_missing_image_names_file_and_row(caption_csv):
    (caption_csv.parent / "images" / "1.png").unlink()
    with pytest.raises(DataError, match=r"captions\.csv row 2 \(line 3\): image 'images/1\.png' not found"):
        load_image_caption_dataset(str(caption_csv))


def test_empty_caption_names_file_and_row(tmp_path):
    _save_image(tmp_path / "a.png")
    records = [{"file_name": "a.png", "text": "ok"}, {"file_name": "a.png", "text": " "}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(DataError, match=r"metadata\.jsonl row 2 \(line 2\): empty caption"):
        load_image_caption_dataset(str(tmp_path))


def test_corrupt_image_raises_on_read_naming_the_file(caption_csv):
    _write_corrupt(caption_csv.parent / "images" / "2.png")
    dataset = load_image_caption_dataset(str(caption_csv))  # existence is checked, decoding is lazy
    _assert_pixels(dataset[0][0])
    with pytest.raises(DataError, match=r"captions\.csv row 3 .*cannot decode image '.*2\.png'"):
        dataset[2]


def test_corrupt_image_in_class_folder_raises_on_read(tmp_path):
    _save_image(tmp_path / "cats" / "good.png")
    _write_corrupt(tmp_path / "cats" / "bad.jpg")
    dataset = load_classification_dataset(str(tmp_path))
    with pytest.raises(DataError, match=r"bad\.jpg"):
        [dataset[i] for i in range(len(dataset))]


def test_corrupt_image_in_saved_dataset_raises_on_read(tmp_path):
    import datasets

    rows = {"image": [{"bytes": b"garbage", "path": None}], "caption": ["broken"]}
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features).save_to_disk(str(tmp_path / "hf"))
    dataset = load_image_caption_dataset(str(tmp_path / "hf"))
    with pytest.raises(DataError, match=r"hf row 0: cannot decode image"):
        dataset[0]


@pytest.mark.parametrize(
    "content, message",
    [("Image,Caption\n", r"empty\.csv: the dataset is empty"), ("", r"empty\.csv: the dataset is empty")],
)
def test_empty_csv_raises(tmp_path, content, message):
    (tmp_path / "empty.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        load_image_caption_dataset(str(tmp_path / "empty.csv"))


def test_empty_class_folders_raise(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        load_classification_dataset(str(tmp_path))
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="the dataset is empty"):
        load_classification_dataset(str(tmp_path))


def test_skip_bad_skips_rows_with_one_warning(caption_csv, caplog):
    (caption_csv.parent / "images" / "0.png").unlink()
    _write_corrupt(caption_csv.parent / "images" / "2.png")
    with caption_csv.open("a") as f:
        f.write("images/1.png,\n")  # empty caption
    with caplog.at_level(logging.WARNING, logger="clipclean.data"):
        dataset = load_image_caption_dataset(str(caption_csv), skip_bad=True)
    assert dataset.captions == ["a green square."]
    _assert_pixels(dataset[0][0])
    warnings = [r for r in caplog.records if r.name.startswith("clipclean.data") and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 bad row(s) of 4" in warnings[0].getMessage()
    assert "captions.csv row 1" in warnings[0].getMessage()


def test_skip_bad_in_class_folders(tmp_path, caplog):
    _save_image(tmp_path / "cats" / "good.png")
    _write_corrupt(tmp_path / "dogs" / "bad.png")
    with caplog.at_level(logging.WARNING, logger="clipclean.data"):
        dataset = load_classification_dataset(str(tmp_path), skip_bad=True)
    assert len(dataset) == 1 and dataset.classnames == ["cats", "dogs"] and dataset.labels == [0]
    assert "skipped 1 bad row(s) of 2" in caplog.text and "bad.png" in caplog.text


def test_skip_bad_with_nothing_left_raises(tmp_path):
    (tmp_path / "c.csv").write_text("image,caption\nmissing.png,a caption\n")
    with pytest.raises(DataError, match=r"c\.csv: no usable rows left"):
        load_image_caption_dataset(str(tmp_path / "c.csv"), skip_bad=True)


def test_without_skip_bad_the_error_counts_the_other_bad_rows(tmp_path):
    (tmp_path / "c.csv").write_text("image,caption\na.png,x\nb.png,y\n")
    with pytest.raises(DataError, match=r"row 1 .*'a\.png' not found \(and 1 more bad row;"):
        load_image_caption_dataset(str(tmp_path / "c.csv"))
