"""embedding-assets: an embedding index managed like a primary database."""

import os

# Models come from installed packages or project-built artifacts; never from a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("LANCE_LOG", "error")  # pylance's own logger: a delta index warns per empty partition
# Index statistics without the IVF centroids (939 x 256 floats at 882,205 rows): only partition counts
# and sizes are read (`index.ann.index_partitions`).
os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")
# Arrow's allocator (mimalloc) keeps the memory it freed instead of handing it back to the OS after 10 ms
# (read once, when pyarrow loads; see embedding_assets.memory). On a VM where a page handed back costs a
# fault to the host when touched again, a 1% refresh at 248k chunks spent 11-13 s of system time and took
# 14.3-15.2 s; with this, 8.3 s and 11.5-11.7 s.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "-1")
