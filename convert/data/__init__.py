"""Data: the sources' loaders and records, the lesion pool, patient-level splits and the fold protocol."""
