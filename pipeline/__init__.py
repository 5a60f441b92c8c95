"""Data, float training, quantization-aware training and int8 export in one command, or one call:

    import pipeline
    result = pipeline.run(pipeline.RunConfig(dataset="photos", weights="v3-small.tflite", image_size=224))

The names below are the package's public API; they are imported on first use (the training stages pull in tfmot and
the exporter, which `import pipeline` alone does not need).
"""

from keras_models import backend as _backend  # noqa: F401  (must precede TensorFlow imports)
from tflite_export import lazy_attributes

# public name -> the module that defines it
_PUBLIC = {
    "RunConfig": "pipeline.config",
    "run": "pipeline.api",
    "RunResult": "pipeline.api",
    "Report": "pipeline.report",
    "ImportConfig": "pipeline.import_tflite",
    "NetAdaptConfig": "pipeline.netadapt",
}
__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
