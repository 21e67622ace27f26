"""edge-birads: BI-RADS group triage of mammograms with an int8 TFLite CNN.

Research use only. Not a diagnostic device: a clinician decides.
This package is the lean runtime: it never imports the training side (convert/, its deep-learning framework);
only bench_baseline.py, the float baseline of `edge-birads bench`, knows that framework exists.
"""

__version__ = "0.1.0"

DISCLAIMER = "Research use only, not a diagnostic device: a clinician decides."
