"""Image-caption and classification datasets that yield un-normalised [0, 1] pixels.

Every dataset here returns images as ``FloatTensor (3, H, W)`` with values in [0, 1] and **no** mean/std
normalisation: :class:`clipclean.models.PixelCLIP` normalises inside ``encode_image``, so triggers can be
pasted into the pixels the datasets return, exactly as an attacker edits an image file.

Image-caption sources (:func:`load_image_caption_dataset`):

* ``"digits"`` / ``"digits:train"`` / ``"digits:defender"`` / ``"digits:test"``: scikit-learn's 1,797 real
  handwritten 8x8 digits, upsampled and captioned from :data:`DIGIT_CAPTION_TEMPLATES` (built in, in memory);
* a ``.csv`` / ``.tsv`` file in the CleanCLIP format (an image-path column and a caption column; relative
  paths resolve against the file's folder);
* an imagefolder with ``metadata.jsonl`` or ``metadata.csv`` (the Hugging Face ``datasets`` convention:
  ``file_name`` plus a caption column);
* a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* webdataset shards: ``"shards/cc3m-{0000..0099}.tar"`` (``KEY.jpg`` + ``KEY.txt`` members; brace ranges, globs,
  ``::`` lists), read by :mod:`clipclean.data.webdataset` (which also streams them per process).

Classification sources (:func:`load_classification_dataset`): ``"digits[:split]"`` or a class-per-folder
tree (ImageNet synset folders map to the OpenAI class names; other folders take their names or a
``classnames`` file).

Bad input (a missing or undecodable image, an empty caption, a missing column, no rows at all) raises
:class:`DataError` naming the file and row; ``skip_bad=True`` drops bad rows with one logged warning.

One module per source -- :mod:`~clipclean.data.digits`, :mod:`~clipclean.data.tables`,
:mod:`~clipclean.data.imagefolder`, :mod:`~clipclean.data.save_to_disk`, :mod:`~clipclean.data.webdataset` -- on top
of :mod:`~clipclean.data.pixels` (image references, the pixel transform), :mod:`~clipclean.data.dataset` (the
dataset classes), :mod:`~clipclean.data.rows` (row checks) and :mod:`~clipclean.data.classnames`;
:mod:`~clipclean.data.sources` dispatches. The public names are re-exported here.

Example::

    >>> from clipclean.data import load_image_caption_dataset, collate_pairs
    >>> dataset = load_image_caption_dataset("digits:defender", image_size=32)
    >>> image, caption = dataset[0]
    >>> image.shape, float(image.min()) >= 0.0, float(image.max()) <= 1.0
    (torch.Size([3, 32, 32]), True, True)
    >>> loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_pairs)
    >>> images, captions = next(iter(loader))      # (8, 3, 32, 32) in [0, 1], list of 8 str
"""

from clipclean.data.dataset import ClassificationDataset, ImageCaptionDataset, collate_pairs
from clipclean.data.digits import DIGIT_CAPTION_TEMPLATES, DIGIT_CLASSNAMES, digits_split_indices
from clipclean.data.imagefolder import IMAGE_EXTENSIONS
from clipclean.data.pixels import DataError, ImageReference, pixel_transform
from clipclean.data.sources import load_classification_dataset, load_image_caption_dataset

__all__ = [
    "DIGIT_CAPTION_TEMPLATES",
    "DIGIT_CLASSNAMES",
    "IMAGE_EXTENSIONS",
    "ClassificationDataset",
    "DataError",
    "ImageCaptionDataset",
    "ImageReference",
    "collate_pairs",
    "digits_split_indices",
    "load_classification_dataset",
    "load_image_caption_dataset",
    "pixel_transform",
]
