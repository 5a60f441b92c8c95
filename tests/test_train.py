"""pipeline.train's optimizer: the fused (one compiled function) SGD update trains as Keras' own SGD does."""

from __future__ import annotations

import numpy as np

from keras_models.backend import keras


def small_model() -> keras.Model:
    """Conv kernels (weight-decayed), BatchNorm (not decayed), a biased head: what the optimizer treats differently."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((8, 8, 3)), layers.Conv2D(8, 3, use_bias=False), layers.BatchNormalization(),
        layers.ReLU(6.0), layers.GlobalAveragePooling2D(), layers.Dense(4, activation="softmax"),
    ])


def test_fused_sgd_update_gives_the_weights_of_keras_own_sgd():
    from pipeline.train import Recipe, compile_model

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(16, 8, 8, 3)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 16)]
    # Weight decay far above the default (0.5-5% of each kernel per step), so a fused path that skipped it would show.
    recipe = Recipe(learning_rate=0.05, weight_decay=1.0, warmup_epochs=0.5)
    initial, trained = {}, {}
    for fused in (True, False):
        keras.utils.set_random_seed(0)
        model = small_model()
        initial[fused] = [w.numpy() for w in model.trainable_weights]
        compile_model(model, recipe, steps_per_epoch=2, epochs=2, fused_update=fused)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        if fused:  # the compiled function did the updates (traced once: same variables every step)
            assert model.optimizer._apply_all.experimental_get_tracing_count() == 1
        trained[fused] = [w.numpy() for w in model.trainable_weights]
    for a, b in zip(initial[True], initial[False]):
        np.testing.assert_array_equal(a, b)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(trained[True], initial[True]))
    assert moved > 1e-3  # four steps changed the weights, so equal results below mean equal updates
    for fused_weights, keras_weights in zip(trained[True], trained[False]):
        np.testing.assert_allclose(fused_weights, keras_weights, rtol=1e-4, atol=1e-6)
