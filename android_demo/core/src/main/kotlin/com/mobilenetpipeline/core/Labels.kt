package com.mobilenetpipeline.core

/** Class label files: one name per line, in class-index order. */
object Labels {
    private val indexed = Regex("""^\s*(\d+)\s*[:\s]\s*(.*)$""")

    /**
     * Parses a labels file: CRLF or LF line ends, a missing final newline and trailing blank lines are fine;
     * lines of the form "0 background" / "0: background" (index then name, Coral style) have the index dropped when
     * every line is numbered 0, 1, 2, ... in order.
     */
    fun parse(text: String): List<String> {
        val lines =
            text
                .removePrefix("\uFEFF")
                .split('\n')
                .map { it.trimEnd('\r', ' ', '\t') }
                .toMutableList()
        while (lines.isNotEmpty() && lines.last().isEmpty()) lines.removeAt(lines.size - 1)
        val matches = lines.map { indexed.matchEntire(it) }
        val numbered =
            lines.isNotEmpty() &&
                matches.withIndex().all { (i, m) -> m != null && m.groupValues[1].toIntOrNull() == i }
        return if (numbered) matches.map { it!!.groupValues[2].trim() } else lines.map { it.trim() }
    }

    /**
     * The labels for a model with [numClasses] outputs: as is when the counts agree; with "background" prepended when
     * the file has one label fewer (a 1000-name file for a 1001-class TF-slim model); with a leading "background"
     * line dropped when the file has one more. Any other mismatch is an error.
     */
    fun forClasses(
        labels: List<String>,
        numClasses: Int,
    ): List<String> =
        when {
            labels.size == numClasses -> labels
            labels.size == numClasses - 1 -> listOf("background") + labels
            labels.size == numClasses + 1 && labels.first().equals("background", ignoreCase = true) -> labels.drop(1)
            else -> throw IllegalArgumentException("labels file has ${labels.size} names for $numClasses classes")
        }
}
