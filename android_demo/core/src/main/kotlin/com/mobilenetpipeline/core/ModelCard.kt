package com.mobilenetpipeline.core

/**
 * `model_card.json`, written by the pipeline's exporter next to `model.tflite` and `labels.txt`
 * (`tflite_export/model_card.py` defines it): `{"schema_version": 1, "name": ...,
 *   "input": {"height", "width", "channels", "dtype", "scale", "zero_point", "mean": [..], "std": [..]},
 *   "output": {"dtype", "scale", "zero_point", "num_classes", "activation"}, "labels_file": "labels.txt", ...}`.
 * `output.activation` is "softmax" (probabilities; also when absent) or "none" (the file ends at the logits: exported
 * with `--logits`, and [ClassifierCore] applies the softmax itself).
 * A card of another [SCHEMA_VERSION], or without one, is refused with the reason, as the Python reader refuses it:
 * its fields may not mean what this code reads them as.
 */
class ModelCard(
    val name: String,
    val input: InputSpec,
    val outputDType: TensorDType,
    val outputQuant: QuantParams,
    val numClasses: Int,
    val labelsFile: String?,
    val outputActivation: OutputActivation = OutputActivation.SOFTMAX,
) {
    companion object {
        /** The card format this code reads; `SCHEMA_VERSION` in tflite_export/model_card.py. */
        const val SCHEMA_VERSION = 1

        fun parse(json: String): ModelCard {
            val root = Json.parse(json) as? Map<*, *> ?: throw IllegalArgumentException("model card is not an object")
            val version =
                root["schema_version"]
                    ?: throw IllegalArgumentException(
                        "model card has no 'schema_version' (written before versioned cards): re-export the model",
                    )
            require(version is Number && version.toDouble() == SCHEMA_VERSION.toDouble()) {
                "model card schema_version $version is not supported (this app reads version $SCHEMA_VERSION)"
            }
            val input = root["input"] as? Map<*, *> ?: throw IllegalArgumentException("model card has no 'input'")
            val output = root["output"] as? Map<*, *> ?: throw IllegalArgumentException("model card has no 'output'")
            val inDType = TensorDType.parse(input.string("dtype"))
            val outDType = TensorDType.parse(output.string("dtype"))
            val spec =
                InputSpec(
                    width = input.int("width"),
                    height = input.int("height"),
                    channels = (input["channels"] as? Number)?.toInt() ?: 3,
                    dtype = inDType,
                    quant = quantOf(input, inDType),
                    mean = perChannel(input["mean"], 0f, "mean"),
                    std = perChannel(input["std"], 1f, "std"),
                )
            return ModelCard(
                name = root["name"] as? String ?: "model",
                input = spec,
                outputDType = outDType,
                outputQuant = quantOf(output, outDType),
                numClasses = output.int("num_classes"),
                labelsFile = root["labels_file"] as? String,
                outputActivation = OutputActivation.parse(output["activation"]),
            )
        }

        private fun quantOf(
            m: Map<*, *>,
            dtype: TensorDType,
        ): QuantParams =
            if (!dtype.isQuantized) {
                QuantParams.NONE
            } else {
                // Written from the float32 value, so Double -> Float gives back the exact tensor scale.
                QuantParams(m.number("scale").toFloat(), m.int("zero_point"))
            }

        private fun perChannel(
            v: Any?,
            default: Float,
            what: String,
        ): FloatArray =
            when (v) {
                null -> {
                    floatArrayOf(default, default, default)
                }

                is Number -> {
                    FloatArray(3) { v.toFloat() }
                }

                is List<*> -> {
                    when (v.size) {
                        1 -> FloatArray(3) { (v[0] as Number).toFloat() }
                        3 -> FloatArray(3) { (v[it] as Number).toFloat() }
                        else -> throw IllegalArgumentException("'$what' needs 1 or 3 values, got ${v.size}")
                    }
                }

                else -> {
                    throw IllegalArgumentException("'$what' must be a number or a list")
                }
            }

        private fun Map<*, *>.number(key: String): Number =
            this[key] as? Number ?: throw IllegalArgumentException("model card: '$key' missing or not a number")

        private fun Map<*, *>.int(key: String): Int {
            val d = number(key).toDouble()
            require(d == Math.floor(d)) { "model card: '$key' must be an integer, got $d" }
            return d.toInt()
        }

        private fun Map<*, *>.string(key: String): String =
            this[key] as? String ?: throw IllegalArgumentException("model card: '$key' missing or not a string")
    }
}

/** What the model's output tensor holds: probabilities (its last op is a softmax) or logits (no softmax). */
enum class OutputActivation(
    val cardName: String,
) {
    SOFTMAX("softmax"),
    NONE("none"),
    ;

    companion object {
        fun parse(value: Any?): OutputActivation {
            if (value == null) return SOFTMAX // cards written before the field existed: every model ended in softmax
            return entries.firstOrNull { it.cardName == value }
                ?: throw IllegalArgumentException(
                    "model card: output activation '$value' is not supported (softmax or none)",
                )
        }
    }
}
