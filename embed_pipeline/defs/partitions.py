"""One dynamic partition per corpus: a subfolder of EMBED_CORPORA_DIR, registered by `embed-pipeline corpus add`."""

import dagster as dg

corpus_partitions = dg.DynamicPartitionsDefinition(name="corpus")
