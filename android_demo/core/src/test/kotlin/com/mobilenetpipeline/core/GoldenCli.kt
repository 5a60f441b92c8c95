package com.mobilenetpipeline.core

import java.io.DataInputStream
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.system.exitProcess

/**
 * Command-line entry used by the Python golden test (tests/test_android_core.py) to run `core` on files the Python
 * pipeline wrote:
 *
 *   preprocess CARD.json IN_DIR OUT_DIR       each IN_DIR/NAME.rgb ("RGB8", u32 BE width, u32 BE height, RGB bytes)
 *                                             -> OUT_DIR/NAME.input (the quantized input tensor) and
 *                                                OUT_DIR/NAME.pixels (the resized float32 pixels, little-endian)
 *   classify CARD.json LABELS IN_DIR OUT_DIR K each IN_DIR/NAME.output (raw output tensor)
 *                                             -> OUT_DIR/NAME.top.tsv ("index<TAB>score<TAB>label" lines, best first)
 *   modelinfo MODEL.tflite OUT.txt            tensors, metadata and packed labels of a model, as key=value lines
 *   app-preprocess ASSETS IN_DIR OUT_DIR      as preprocess (.input only), configured the way the app configures
 *                                             itself from its assets folder (model.tflite, model_card.json,
 *                                             labels.txt through ModelSpec.resolve) and run through ClassifierCore
 *   app-classify ASSETS IN_DIR OUT_DIR K      as classify, configured from ASSETS like app-preprocess
 */
fun main(args: Array<String>) {
    try {
        when (args.firstOrNull()) {
            "preprocess" -> {
                preprocess(File(args[1]), File(args[2]), File(args[3]))
            }

            "classify" -> {
                classify(File(args[1]), File(args[2]), File(args[3]), File(args[4]), args[5].toInt())
            }

            "modelinfo" -> {
                modelInfo(File(args[1]), File(args[2]))
            }

            "app-preprocess" -> {
                appPreprocess(File(args[1]), File(args[2]), File(args[3]))
            }

            "app-classify" -> {
                appClassify(File(args[1]), File(args[2]), File(args[3]), args[4].toInt())
            }

            else -> {
                System.err.println("usage: preprocess|classify|modelinfo|app-preprocess|app-classify ...")
                exitProcess(2)
            }
        }
    } catch (e: Exception) {
        e.printStackTrace()
        exitProcess(1)
    }
}

private fun readRgb(f: File): RgbImage =
    DataInputStream(f.inputStream().buffered()).use { d ->
        val magic = ByteArray(4).also { d.readFully(it) }
        require(String(magic, Charsets.US_ASCII) == "RGB8") { "$f: not an RGB8 file" }
        val w = d.readInt()
        val h = d.readInt()
        RgbImage(w, h, ByteArray(w * h * 3).also { d.readFully(it) })
    }

private fun preprocess(
    card: File,
    inDir: File,
    outDir: File,
) {
    val spec = ModelCard.parse(card.readText()).input
    outDir.mkdirs()
    val files = inDir.listFiles { f -> f.name.endsWith(".rgb") }!!.sortedBy { it.name }
    for (f in files) {
        val pixels = Preprocessing.evalResize(readRgb(f), spec.width, spec.height)
        val stem = f.name.removeSuffix(".rgb")
        File(outDir, "$stem.input").writeBytes(Quantization.quantize(pixels, spec))
        val raw = ByteBuffer.allocate(pixels.size * 4).order(ByteOrder.LITTLE_ENDIAN)
        raw.asFloatBuffer().put(pixels)
        File(outDir, "$stem.pixels").writeBytes(raw.array())
    }
    println("preprocessed ${files.size} images")
}

private fun classify(
    card: File,
    labelsFile: File,
    inDir: File,
    outDir: File,
    k: Int,
) {
    val c = ModelCard.parse(card.readText())
    val labels = Labels.forClasses(Labels.parse(labelsFile.readText()), c.numClasses)
    outDir.mkdirs()
    val files = inDir.listFiles { f -> f.name.endsWith(".output") }!!.sortedBy { it.name }
    for (f in files) {
        val scores = Quantization.dequantize(f.readBytes(), c.outputDType, c.outputQuant)
        val lines = TopK.topK(scores, k).joinToString("") { "${it.index}\t${it.score}\t${labels[it.index]}\n" }
        File(outDir, f.name.removeSuffix(".output") + ".top.tsv").writeText(lines)
    }
    println("classified ${files.size} outputs")
}

private fun modelInfo(
    model: File,
    out: File,
) {
    val m = TfliteModel.parse(model.readBytes())
    val sb = StringBuilder()

    fun tensor(
        prefix: String,
        t: TensorInfo,
    ) {
        sb.append("$prefix.shape=${t.shape.joinToString(",")}\n")
        sb.append("$prefix.type=${t.typeCode}\n")
        sb.append("$prefix.scale=${t.quant.scale}\n")
        sb.append("$prefix.zero_point=${t.quant.zeroPoint}\n")
    }
    m.inputs.forEachIndexed { i, t -> tensor("input$i", t) }
    m.outputs.forEachIndexed { i, t -> tensor("output$i", t) }
    sb.append("mean=${m.normalizationMean?.joinToString(",") ?: ""}\n")
    sb.append("std=${m.normalizationStd?.joinToString(",") ?: ""}\n")
    sb.append("label_files=${m.labelFileNames.joinToString(",")}\n")
    sb.append("associated_files=${m.associatedFiles.keys.joinToString(",")}\n")
    val labels = m.embeddedLabels()
    sb.append("labels.count=${labels?.size ?: 0}\n")
    sb.append("labels.first=${labels?.firstOrNull() ?: ""}\n")
    sb.append("labels.last=${labels?.lastOrNull() ?: ""}\n")
    val spec = m.inputSpec()
    sb.append("spec=${spec.width}x${spec.height} ${spec.dtype}\n")
    out.writeText(sb.toString())
}

/**
 * The spec the app builds at start-up (the demo's ModelAssets.load): the model file's tensors and metadata, refined
 * by model_card.json and labels.txt when they are there. Checking the bundled model through this path, rather than
 * through the card alone, catches a card or labels file that disagrees with the model the app actually loads.
 */
private fun appSpec(assets: File): ModelSpec {
    fun textOf(name: String): String? = File(assets, name).takeIf { it.isFile }?.readText()
    val model = TfliteModel.parse(File(assets, "model.tflite").readBytes())
    return ModelSpec.resolve(model, cardJson = textOf("model_card.json"), labelsText = textOf("labels.txt"))
}

/** Runs [handle] on every IN_DIR file ending in [suffix], in name order, with the app's core; returns how many. */
private fun forEachWithAppCore(
    assets: File,
    inDir: File,
    outDir: File,
    suffix: String,
    handle: (core: ClassifierCore, file: File, out: File) -> Unit,
): Int {
    val core = ClassifierCore(appSpec(assets))
    outDir.mkdirs()
    val files = inDir.listFiles { f -> f.name.endsWith(suffix) }!!.sortedBy { it.name }
    files.forEach { handle(core, it, File(outDir, it.name.removeSuffix(suffix))) }
    return files.size
}

private fun appPreprocess(
    assets: File,
    inDir: File,
    outDir: File,
) {
    val n =
        forEachWithAppCore(assets, inDir, outDir, ".rgb") { core, f, out ->
            File("$out.input").writeBytes(core.inputBytes(readRgb(f)))
        }
    println("preprocessed $n images")
}

private fun appClassify(
    assets: File,
    inDir: File,
    outDir: File,
    k: Int,
) {
    val n =
        forEachWithAppCore(assets, inDir, outDir, ".output") { core, f, out ->
            val scores = core.scores(f.readBytes())
            // core.top gives the names the screen shows; TopK (which core.top uses) gives their indices to compare.
            val lines =
                TopK.topK(scores, k).zip(core.top(scores, k)).joinToString("") { (ranked, shown) ->
                    "${ranked.index}\t${shown.second}\t${shown.first}\n"
                }
            File("$out.top.tsv").writeText(lines)
        }
    println("classified $n outputs")
}
