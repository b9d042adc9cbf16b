"""``python -m embed_pipeline.stages.training`` (and ``torchrun ... -m embed_pipeline.stages.training``)."""

import sys

from embed_pipeline.stages.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
