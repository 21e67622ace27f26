"""convert: the heavy side of edge-birads (data, training, int8 conversion, evaluation).

Run from the repository root as ``python -m convert ...``; it is not installed
with the runtime. TensorFlow is imported only inside the modules that need it
(models, losses, train, export), so the data, split and metric code can be
imported and tested without it. Preprocessing comes from
:mod:`edge_birads.preprocess` so the deployed model sees exactly what it was
trained on; ``edge_birads`` never imports this package.
"""

__all__ = ["data", "split", "metrics"]
