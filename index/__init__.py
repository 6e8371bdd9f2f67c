"""FAISS indexes of image and caption embeddings.

`load_index` / `LoadedIndex` read an index directory (docs/CONTRACTS.md); `build_index` and
`measure_recall` are the model-free FAISS layer. The programs are `python -m index.build`,
`index.add`, `index.query` and `index.evaluate`.
"""

from index.faiss_index import build_index, measure_recall
from index.store import (
    IndexDirError,
    IndexFileMissingError,
    LoadedIndex,
    ModelMismatchError,
    check_built_with,
    load_index,
)

__all__ = [
    "IndexDirError",
    "IndexFileMissingError",
    "LoadedIndex",
    "ModelMismatchError",
    "build_index",
    "check_built_with",
    "load_index",
    "measure_recall",
]
