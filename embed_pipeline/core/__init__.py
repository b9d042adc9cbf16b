"""What several stages share: settings, artifact paths and atomic writes, record schemas, the encoder."""
