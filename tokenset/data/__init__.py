"""Images and labels: three sources behind one API.

    prepare(cfg) -> Path                              fetch + slice/parse + split, cached under <root>/prepared/
    load_dataset(cfg, split, as_float, flip)          torch Dataset of (image (3, S, S), label: int)
    load_arrays(cfg, split) -> (images, labels)       in-memory fast path: (N, 3, S, S) uint8, (N,) int64
    class_names(cfg) -> list[str]
    make_loader(dataset, batch_size, shuffle, seed, ...) -> DataLoader (DistributedSampler when distributed)
    to_float / to_uint8                               uint8 [0, 255] <-> float [-1, 1] (from tokenset.images)
    python -m tokenset.data --params params.yaml      prepare and print the summary

Modules: ``prepared`` (errors, splits, the npz writer, the cache key), ``transforms`` (size, flips, RGB, crops),
``debian`` (fetch and unpack a .deb), one per source (``crawl``, ``fashion``, ``imagefolder``), ``datasets``
(prepare, Datasets, load_arrays, loaders) and ``cli``; this ``__init__`` re-exports their public API.

Sources (``DataConfig.name``):

* ``crawl`` (default): the sprite sheets of the Debian package crawl-tiles-data (Dungeon Crawl Stone Soup tiles,
  CC0). ``apt-get download`` (no root needed) into ``<root>/raw/crawl-tiles-data/``, unpacked with ``dpkg-deb -x``
  (or a pure-Python reader of the .deb when dpkg-deb is absent). Each sheet in ``cfg.crawl_sheets`` is cut on the
  32 px grid; cells that are fully transparent or of one colour are dropped, alpha is composited on black, the
  tile is labelled by its sheet, and exact duplicates (after compositing) are dropped, keeping the first.
  Only ``floor`` and ``wall`` are on a 32 px grid: ``main``, ``player``, ``feat``, ``gui`` and ``icons`` are atlases
  in which crawl's tile packer trimmed every sprite to its bounding box and packed them edge to edge, so 32 px
  cells cut through sprites (in 0.28 at most 10 of the 600-2080 cells of those sheets hold whole sprites).
  ``grid_alignment`` measures this and ``prepare`` refuses such sheets; title_*, logo* and stone_soup_icon* are
  artwork, not tiles. The split is stratified per class and deterministic in ``cfg.seed``.
* ``fashion``: Debian dataset-fashion-mnist (70k 28x28 greyscale, 10 classes), parsed from its IDX files; grey is
  repeated to 3 channels; the official train/test split is our train/val (``val_fraction`` is not used).
* ``imagefolder``: ``<root>/train/<class>/*.{jpg,png,...}`` and, if present, ``<root>/val/<class>/*`` (else
  ``val_fraction`` of each class is held out). Images are loaded lazily, converted to RGB (below) and centre
  cropped as in ADM (``adm_center_crop``). ``prepare`` decodes every file once, in parallel, and caches an index
  at ``<root>/prepared/imagefolder.json`` keyed by the files' names, sizes and mtimes.

Prepared file ``<root>/prepared/<name>.npz`` (crawl, fashion; written deterministically, loads with
``allow_pickle=False``), with its manifest ``<name>.json`` (counts per class and split, what was dropped, sha256
of the npz and of the source .deb, the parameters the split used)::

    images       (N, H, W, 3) uint8   RGB at the source's native size (crawl 32x32, fashion 28x28)
    labels       (N,) int64           index into class_names
    split        (N,) uint8           0 = train, 1 = val
    origin       (N,) int64           crawl: cell index row * cols + col within its sheet; fashion: index in its file
    class_names  (K,) str

Conversions (never silent): sizes are fitted to ``cfg.image_size`` when loading: fashion is centre padded with
black when ``image_size >= 28`` (32 -> 2 px each side) and resized otherwise; crawl is resized when
``image_size != 32``; resizing is antialiased bilinear (``fit_size``). ImageFolder files: greyscale and palette
become RGB (grey repeated), alpha (RGBA, LA, palette transparency) is composited on black, 16-bit greyscale is
scaled by 1/257, CMYK/YCbCr are converted by PIL; any other mode is a bad file; non-square images are centre
cropped. EXIF orientation is not applied (as in ADM).

Errors: ``DataError`` (a RuntimeError) for anything about the data itself: apt-get missing or the package not
available (the message says how to provide the data, or to point ``data.root`` at an ImageFolder), unreadable or
truncated files (listed; with ``cfg.skip_bad_files=True`` they are skipped and a ``UserWarning`` gives the count),
directories without images, an IDX file of the wrong length.
"""

from tokenset.data.crawl import (CRAWL_PACKAGE, CRAWL_TILES_DIR, GRID_MIN_ALIGNMENT, TILE, grid_alignment,
                                 read_crawl_sheets, slice_sheet, tiles_from_sheets)
from tokenset.data.datasets import (ArrayDataset, class_names, load_arrays, load_dataset, make_loader, prepare,
                                    samples_per_class, set_epoch, split_labels, summary)
from tokenset.data.debian import extract_deb, fetch_deb
from tokenset.data.fashion import FASHION_CLASSES, FASHION_DIR, FASHION_PACKAGE, read_idx
from tokenset.data.imagefolder import IMAGE_EXTENSIONS, ImageFolderDataset, check_images
from tokenset.data.shapes import SHAPES, drawn_shapes
from tokenset.data.prepared import FORMAT_VERSION, SPLITS, DataError, Split, stratified_split
from tokenset.data.transforms import adm_center_crop, composite_on_black, fit_size, random_hflip, to_rgb
from tokenset.images import to_float, to_uint8

__all__ = [
    "prepare", "load_dataset", "load_arrays", "class_names", "split_labels", "samples_per_class", "summary",
    "make_loader", "set_epoch", "ArrayDataset", "ImageFolderDataset", "DataError", "Split", "SPLITS",
    "FORMAT_VERSION", "stratified_split", "to_float", "to_uint8", "fit_size", "random_hflip", "composite_on_black",
    "adm_center_crop", "to_rgb", "fetch_deb", "extract_deb", "TILE", "GRID_MIN_ALIGNMENT", "CRAWL_PACKAGE",
    "CRAWL_TILES_DIR", "grid_alignment", "slice_sheet", "tiles_from_sheets", "read_crawl_sheets", "FASHION_PACKAGE",
    "FASHION_DIR", "FASHION_CLASSES", "read_idx", "IMAGE_EXTENSIONS", "check_images", "SHAPES", "drawn_shapes",
]
