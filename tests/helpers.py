"""Shared by the test modules: the two questions of the left-padded batch and a no-grad forward."""
import torch

QUESTIONS = ["what color is the circle ?", "how many star are there in this image ?"]


@torch.no_grad()
def logits(model, inputs, pixels):
    return model(**inputs, pixel_values=pixels).logits
