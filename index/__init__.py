"""Index directories of image and caption embeddings: build, keep current, load, search.

`index.builder` builds one from any source (a dataset split, a folder, a list, shards),
`index.update` adds to and removes from it, `index.store` writes and loads it
(docs/CONTRACTS.md), `index.search` searches a loaded one; `index.faiss_index` is the
model-free FAISS layer. The programs are `python -m index.build`, `index.add`,
`index.remove`, `index.query`, `index.evaluate` and `index.beam_embed`.
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
