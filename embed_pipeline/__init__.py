"""embed_pipeline: adapt a text-embedding model to your own documents, as Dagster assets.

``dagster ... -m embed_pipeline`` finds the ``Definitions`` object as ``embed_pipeline.definitions``. It is loaded
lazily so that the stage code (``embed_pipeline.stages``), which never imports dagster, stays light when run on
its own or in a container. (It cannot be called ``defs``: that is the Dagster layer's subpackage.)
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "definitions":
        from embed_pipeline.defs import defs

        return defs
    raise AttributeError(f"module 'embed_pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "definitions"])
