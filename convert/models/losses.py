"""Focal loss (Lin et al. 2017) as the paper used it: gamma 2, alpha 0.25.

FL(p) = -sum_c y_c * alpha * (1 - p_c)^gamma * log(p_c), averaged over the
batch. The (1 - p)^gamma factor shrinks the loss of images the network
already gets right, so the rare, hard classes weigh more. Written out here
(rather than only using Keras's CategoricalFocalCrossentropy) so the formula
in the model card is the one in the code; registered so a saved model loads.
"""

from __future__ import annotations

import keras
from keras import ops

EPSILON = 1e-7


def focal_loss_value(y_true, y_pred, gamma: float = 2.0, alpha: float = 0.25):
    """Per-sample focal loss for one-hot ``y_true`` and softmax ``y_pred``."""
    y_pred = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    weight = alpha * ops.power(1.0 - y_pred, gamma)
    return ops.sum(-y_true * weight * ops.log(y_pred), axis=-1)


@keras.saving.register_keras_serializable(package="edge_birads")
class FocalLoss(keras.losses.Loss):
    """Categorical focal loss; ``gamma=0, alpha=1`` is plain cross-entropy."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25, name: str = "focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def call(self, y_true, y_pred):
        return focal_loss_value(ops.cast(y_true, y_pred.dtype), y_pred, self.gamma, self.alpha)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha}
