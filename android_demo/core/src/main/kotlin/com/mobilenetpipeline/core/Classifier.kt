package com.mobilenetpipeline.core

/** Everything needed to turn camera frames into the model's input and its output into named scores. */
class ModelSpec(
    val input: InputSpec,
    val outputDType: TensorDType,
    val outputQuant: QuantParams,
    val labels: List<String>,
) {
    val numClasses: Int get() = labels.size

    companion object {
        /**
         * The spec of a model: the pipeline's `model_card.json` when given (it is authoritative for mean/std),
         * otherwise the `.tflite` file's own tensors and metadata. Labels come from [labelsText] (`labels.txt`) when
         * given, else from the label file packed in the model, else "class N".
         */
        fun resolve(
            model: TfliteModel,
            cardJson: String? = null,
            labelsText: String? = null,
        ): ModelSpec {
            val out =
                model.outputs.singleOrNull()
                    ?: throw IllegalArgumentException("expected one output tensor, got ${model.outputs.size}")
            val outDType = out.dtype ?: throw IllegalArgumentException("unsupported output type code ${out.typeCode}")
            val numClasses = out.shape.lastOrNull() ?: throw IllegalArgumentException("output has no shape")
            val card = cardJson?.let { ModelCard.parse(it) }
            val fromModel = model.inputSpec()
            val input =
                if (card == null) {
                    fromModel
                } else {
                    require(card.input.width == fromModel.width && card.input.height == fromModel.height) {
                        "model card says ${card.input.width}x${card.input.height}, model says " +
                            "${fromModel.width}x${fromModel.height}"
                    }
                    // Tensor type and quantization are the file's; normalization is the card's.
                    InputSpec(
                        fromModel.width,
                        fromModel.height,
                        fromModel.dtype,
                        fromModel.quant,
                        card.input.mean,
                        card.input.std,
                    )
                }
            val rawLabels = labelsText?.let { Labels.parse(it) } ?: model.embeddedLabels()
            val labels = rawLabels?.let { Labels.forClasses(it, numClasses) } ?: List(numClasses) { "class $it" }
            return ModelSpec(input, outDType, out.quant, labels)
        }
    }
}

/** A frame's pipeline in the app: rotate, eval crop/resize, quantize; and dequantize + top-k on the way out. */
class ClassifierCore(
    val spec: ModelSpec,
) {
    /** Upright RGB frame -> input tensor bytes (native order for float32 inputs is the caller's business). */
    fun inputBytes(frame: RgbImage): ByteArray {
        val pixels = Preprocessing.evalResize(frame, spec.input.width, spec.input.height)
        return Quantization.quantize(pixels, spec.input)
    }

    fun inputFloats(frame: RgbImage): FloatArray {
        val pixels = Preprocessing.evalResize(frame, spec.input.width, spec.input.height)
        return Quantization.normalize(pixels, spec.input)
    }

    fun scores(outputBytes: ByteArray): FloatArray =
        Quantization.dequantize(outputBytes, spec.outputDType, spec.outputQuant)

    fun top(
        scores: FloatArray,
        k: Int,
    ): List<Pair<String, Float>> = TopK.topK(scores, k).map { spec.labels[it.index] to it.score }
}
