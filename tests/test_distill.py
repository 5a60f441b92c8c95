"""pipeline.distill: QAT that learns the float model's predictions rather than the labels."""

from __future__ import annotations

import numpy as np

from keras_models.backend import keras, tf
from pipeline.distill import Distiller


def _linear_classifier(seed: int, scale: float = 1.0) -> keras.Model:
    inputs = keras.Input((8,))
    init = keras.initializers.RandomNormal(stddev=scale, seed=seed)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax", kernel_initializer=init)(inputs))


def _fit(model: keras.Model, features, labels) -> None:
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    model.fit(features, labels, batch_size=64, epochs=40, verbose=0)


def test_distiller_learns_the_teacher_and_ignores_the_labels():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(512, 8)).astype(np.float32)
    wrong_labels = tf.one_hot(np.zeros(512, np.int32), 4)  # every image "class 0": the labels must not matter
    teacher = _linear_classifier(seed=1, scale=3.0)  # a confident function of the input, using all four classes
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    teacher_top1 = teacher.predict(features, verbose=0).argmax(-1)
    assert len(set(teacher_top1)) == 4

    distilled = _linear_classifier(seed=2)
    distiller = Distiller(distilled, teacher=teacher)
    # Only the student trains; the teacher is neither a trainable nor a saved variable of the Distiller.
    assert {v.ref() for v in distiller.trainable_variables} == {v.ref() for v in distilled.trainable_variables}
    assert {v.ref() for v in distiller.weights} == {v.ref() for v in distilled.weights}
    _fit(distiller, features, wrong_labels)
    on_labels = _linear_classifier(seed=2)
    _fit(on_labels, features, wrong_labels)

    agreement = np.mean(distilled.predict(features, verbose=0).argmax(-1) == teacher_top1)
    assert agreement > 0.9, agreement
    # The same training on the labels learns the labels instead: the test can tell the two apart.
    assert np.mean(on_labels.predict(features, verbose=0).argmax(-1) == 0) > 0.95
    assert all(np.array_equal(a, b) for a, b in zip(teacher.get_weights(), teacher_weights))
    # Distiller predicts with the student.
    np.testing.assert_allclose(distiller.predict(features[:16], verbose=0), distilled.predict(features[:16], verbose=0))
