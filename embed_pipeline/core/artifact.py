"""The base of every artifact handle: one asset's folder for one corpus, and the class that owns its layout.

Each asset's output is a folder ``<artifacts>/<corpus>/<asset>/``. Its class (``Chunks``, ``QASplits``,
``FinetunedModel``, ...) lives beside the stage that writes it and is the only place its file names are written
down: the stage writes through it, downstream stages and the Dagster layer read through it. A handle is a small
pydantic model holding the folder, so it crosses a process or container boundary as JSON (``{"dir": "..."}``)
and means the same on both sides. See docs/architecture.md ("Artifacts").
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict

from embed_pipeline.core.artifacts import asset_dir


class MissingArtifactError(FileNotFoundError):
    """An upstream asset was never materialized for this corpus (or its folder lost the file that marks it)."""


class Artifact(BaseModel):
    """A handle on one asset's folder. Subclasses set ``asset`` (the asset key and folder name) and ``marker``
    (the file whose presence says the asset was written; relative to the folder)."""

    model_config = ConfigDict(frozen=True)

    asset: ClassVar[str]
    marker: ClassVar[str]

    dir: Path

    @classmethod
    def at(cls, artifacts_dir: Path | str, corpus: str) -> Self:
        """The handle of this asset for ``corpus`` under ``artifacts_dir`` (``<artifacts>/<corpus>/<asset>/``)."""
        return cls(dir=asset_dir(Path(artifacts_dir), corpus, cls.asset))

    def exists(self) -> bool:
        return (self.dir / self.marker).exists()

    def require(self) -> Self:
        """This handle, if its asset was written; else an error saying which asset to materialize."""
        if not self.exists():
            raise MissingArtifactError(
                f"{self.dir / self.marker} does not exist: materialize the upstream asset '{self.asset}' for this "
                f"corpus first (e.g. dagster asset materialize -m embed_pipeline --select '{self.asset}' "
                "--partition <corpus>)."
            )
        return self

    def file(self, name: str) -> Path:
        return self.dir / name
