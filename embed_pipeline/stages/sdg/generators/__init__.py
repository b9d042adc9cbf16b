"""The synthetic-data generators, one file each, behind one protocol (``base.py``) and one registry (``registry.py``).

To add one: write ``generators/<name>.py`` with a :class:`~.base.Generator` called ``GENERATOR``, and add its
name and module to ``registry.GENERATOR_MODULES``. The ``qa_pairs`` stage, its run config (one section per config
the generator declares) and its metadata follow from the registry. See docs/architecture.md ("Add a generator").
"""
