"""Programs that create the datasets (see each one's --help) and their shared helpers."""
