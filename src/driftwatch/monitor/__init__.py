"""What driftwatch watches. Pure: no I/O; records into driftwatch.metrics."""
