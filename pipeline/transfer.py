"""Transfer learning from pretrained (ImageNet) weights: the recipe `pipeline.train_and_export` picks when --weights
is given.

Small data sets cannot retrain a backbone from scratch, and a new classifier on top of pretrained features is random
at first: its gradients would disturb the backbone before the head has learned anything. So, as in the Keras and
PyTorch transfer-learning guides (and Model Maker):

1. `head`: the classifier alone trains on frozen features, at the full learning rate;
2. `float`: everything but BatchNorm fine-tunes with Adam at a low rate (pipeline.train.Recipe.optimizer says why);
3. QAT as usual, from the fine-tuned model.

BatchNorm stays in inference mode throughout. Batch statistics of a few hundred photos are a poor estimate of the
ImageNet ones the weights were trained with, and the BatchNorms of weights read from a quantized .tflite hold folded
biases with identity statistics (keras_models.tflite_weights) that batch statistics would destroy.
"""

from __future__ import annotations

from keras_models.backend import keras
from keras_models.tflite_weights import CLASSIFIER_NAMES

RECIPES = ("auto", "scratch", "transfer")


def resolve_recipe(recipe: str, weights: str) -> str:
    """"auto" means transfer when there are pretrained weights, scratch otherwise."""
    if recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if recipe == "auto":
        return "scratch" if weights in (None, "", "none") else "transfer"
    return recipe


def classifier(model: keras.Model) -> keras.layers.Layer:
    layer = next((layer for layer in model.layers if layer.name in CLASSIFIER_NAMES), None)
    if layer is None:
        raise ValueError(f"{model.name} has no classifier layer ({', '.join(CLASSIFIER_NAMES)}) to train as a new head")
    return layer


def freeze_all_but(model: keras.Model, keep: keras.layers.Layer) -> None:
    for layer in model.layers:
        layer.trainable = layer is keep


def unfreeze_all_but_batch_norm(model: keras.Model) -> None:
    for layer in model.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
