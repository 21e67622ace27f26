"""Networks: the paper CNN, the lesion FCN, losses, and the pretrained trunks."""
