package com.mobilenetpipeline.core

/** Everything needed to turn camera frames into the model's input and its output into named scores. */
class ModelSpec(
    val input: InputSpec,
    val outputDType: TensorDType,
    val outputQuant: QuantParams,
    val labels: List<String>,
    val outputActivation: OutputActivation = OutputActivation.SOFTMAX,
) {
    val numClasses: Int get() = labels.size

    companion object {
        /**
         * The spec of a model: the pipeline's `model_card.json` when given (it is authoritative for mean/std),
         * otherwise the `.tflite` file's own tensors and metadata. Labels come from [labelsText] (`labels.txt`) when
         * given, else from the label file packed in the model, else "class N". Whether the output is logits comes
         * from the card; without one it is taken as probabilities (the ranking is the same either way).
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
            return ModelSpec(input, outDType, out.quant, labels, card?.outputActivation ?: OutputActivation.SOFTMAX)
        }
    }
}

/**
 * A frame's pipeline in the app: eval crop/resize and quantize on the way in, dequantize + top-k on the way out.
 * The input arrays are allocated once and reused for every frame (at 224x224: 600 KB of float pixels plus the
 * tensor), so the array returned by [inputBytes] / [inputFloats] is overwritten by the next call. Not thread-safe.
 */
class ClassifierCore(
    val spec: ModelSpec,
) {
    private val size = spec.input.width * spec.input.height * 3
    private val pixels = FloatArray(size)
    private val bytes by lazy { ByteArray(size) }
    private val floats by lazy { FloatArray(size) }

    /** Upright RGB frame -> input tensor bytes of a UINT8/INT8 model. */
    fun inputBytes(frame: RgbImage): ByteArray = Quantization.quantize(resized(frame), spec.input, bytes)

    /** Upright RGB frame -> input tensor values of a FLOAT32 model. */
    fun inputFloats(frame: RgbImage): FloatArray = Quantization.normalize(resized(frame), spec.input, floats)

    private fun resized(frame: RgbImage): FloatArray =
        Preprocessing.evalResize(frame, spec.input.width, spec.input.height, out = pixels)

    /** An integer output tensor -> probabilities (dequantized; softmax applied when the model ends at logits). */
    fun scores(outputBytes: ByteArray): FloatArray =
        probabilities(Quantization.dequantize(outputBytes, spec.outputDType, spec.outputQuant))

    /** A float output tensor -> probabilities (softmax applied, in place, when the model ends at logits). */
    fun scores(outputFloats: FloatArray): FloatArray = probabilities(outputFloats)

    private fun probabilities(values: FloatArray): FloatArray =
        if (spec.outputActivation == OutputActivation.NONE) Softmax.inPlace(values) else values

    fun top(
        scores: FloatArray,
        k: Int,
    ): List<Pair<String, Float>> = TopK.topK(scores, k).map { spec.labels[it.index] to it.score }
}

object Softmax {
    /** exp(v - max) / sum, written over [values] and returned; the order of the values is kept. */
    fun inPlace(values: FloatArray): FloatArray {
        if (values.isEmpty()) return values
        val max = values.max()
        var sum = 0.0
        for (i in values.indices) {
            val e = Math.exp((values[i] - max).toDouble())
            values[i] = e.toFloat()
            sum += e
        }
        for (i in values.indices) values[i] = (values[i] / sum).toFloat()
        return values
    }
}
