"""Experiments that call the pipeline: ablations, ensembles, the pretrained rows' extra measurements."""
