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
# Arrow's allocator (mimalloc) hands memory it freed back to the OS after a second unused, not 10 ms (read
# once, when pyarrow loads; see embedding_assets.memory). On a VM where a page handed back costs a fault to
# the host when touched again, a 1% refresh at 248k chunks spent 11-13 s of system time after 10 ms and
# took 14.3-15.2 s; never handing it back, 8.3 s and 11.5-11.7 s. But kept forever, what a full build's
# stages freed stayed beside the next stage: the 1.02M build peaked at 4.03 GiB (3.59 with this). At 248k
# chunks (2 cores, AVX-512): never, build peak 2.03-2.06 GiB, 1% edit 5.0-5.6 s; after 1 s, 1.74 GiB and
# 5.0-5.7 s; after 10 ms, 1.61 GiB and 4.9-5.3 s.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "1000")
