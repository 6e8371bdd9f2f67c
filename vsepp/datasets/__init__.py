"""Dataset readers: Flickr8k / Flickr30k seed layouts and Karpathy JSON, one interface.

`load_split` returns a `SplitData` whose image i owns caption rows 5i..5i+4, the layout the
evaluation protocol expects. Every load logs one INFO line with what was read, skipped and
ignored; the same counts are on `SplitData.skipped` / `SplitData.ignored`.
"""

from vsepp.datasets.core import DatasetError, MissingImagesError, SplitData
from vsepp.datasets.loader import DATASETS, load_split

__all__ = ["DATASETS", "DatasetError", "MissingImagesError", "SplitData", "load_split"]
