"""The demonstration data stack: one HDF5 layout, its writer and reader, the torch datasets, the embedding cache.

* :mod:`dynaguide.data.schema` — the file layout (robomimic / official-DynaGuide), :class:`~.schema.Demo`
  (one demonstration in memory) and checked reads of a layout's datasets;
* :mod:`dynaguide.data.writer` — :func:`~.writer.write_demo` / :func:`~.writer.write_hdf5_dataset`, the one
  writer of that layout;
* :mod:`dynaguide.data.source` — :class:`~.source.DemoSource`, read access to demos in a file or in memory, and
  :func:`~.source.split_demos`;
* :mod:`dynaguide.data.datasets` — the time convention and the training datasets
  (:class:`~.datasets.PolicyDataset`, :class:`~.datasets.DynamicsDataset`);
* :mod:`dynaguide.data.embedding_cache` — frozen-embedder tokens of every frame, cached next to the dataset.
"""
