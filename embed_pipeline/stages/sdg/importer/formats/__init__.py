"""The three import formats, one reader each: ``recipe``, ``pairs`` and ``beir``.

Each reader turns its records into :class:`~embed_pipeline.stages.sdg.importer.state.RawPair` entries of the
:class:`~embed_pipeline.stages.sdg.importer.state.ImportState` and counts the records it cannot use.
"""
