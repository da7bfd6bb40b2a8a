"""Approximate nearest neighbours: FAISS behind one package.

- :mod:`.spec`: index specs, the ``auto`` rule, search params (imports no faiss);
- :mod:`.raw`: faiss itself: raw indexes from factory strings, reading and writing files;
- :mod:`.source`: vectors streamed in chunks (:class:`~.source.VectorSource`);
- :mod:`.build`: streamed builds, on-disk inverted lists written in two passes;
- :mod:`.index`: :class:`~.index.VectorIndex`, the wrapper everything else uses;
- :mod:`.tuning`: exact ground truth, recall@k, tuning of nprobe / efSearch;
- :mod:`.files`: a library's index files, opened against their manifest and verified;
- :mod:`.publish`: a space's index built from the store, opened and published.

Nothing is imported here, so that importing one module loads only what it needs.
"""
