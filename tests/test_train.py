"""pipeline.train's optimizer: the fused (one compiled function) SGD update trains as Keras' own SGD does."""

from __future__ import annotations

import numpy as np

from keras_models.backend import keras


def test_fused_sgd_update_gives_the_weights_of_keras_own_sgd():
    import keras_models
    from pipeline.train import Recipe, compile_model

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(16, 32, 32, 3)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 16)]
    # Weight decay well above the default, so a fused path that skipped or reordered it would show.
    recipe = Recipe(learning_rate=0.05, weight_decay=0.01, warmup_epochs=0.5)
    initial, trained = {}, {}
    for fused in (True, False):
        keras.utils.set_random_seed(0)
        model = keras_models.build("small", input_shape=(32, 32, 3), alpha=0.35, num_classes=4, dropout=0.0)
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
