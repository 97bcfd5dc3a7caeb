"""The data stage: read, validate, prepare and batch interaction logs with Ray Data."""
