"""``python -m embed_pipeline.stages.evaluation``."""

from embed_pipeline.stages.evaluation.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
