"""Finished investigations: the scripts behind docs/findings.md, kept so that each figure there can be measured again.

Not installed with the package (pyproject.toml lists keras_models, tflite_export, pipeline and bench); run them from
the repository root as `python -m experiments.NAME`. They may import bench/, never the other way round. The index,
with each one's question and conclusion, is experiments/README.md.
"""
