package com.mobilenetpipeline.core

/**
 * A small strict JSON reader (RFC 8259) for model cards: objects become `Map<String, Any?>`, arrays `List<Any?>`,
 * numbers `Double`, plus `String`, `Boolean` and `null`. Kept dependency-free so `core` stays plain Kotlin/JVM.
 */
object Json {
    class ParseException(
        message: String,
    ) : IllegalArgumentException(message)

    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipWs()
        val v = p.value()
        p.skipWs()
        if (p.pos != text.length) throw p.error("trailing characters")
        return v
    }

    private class Parser(
        val s: String,
    ) {
        var pos = 0

        fun error(msg: String) = ParseException("JSON: $msg at offset $pos")

        fun skipWs() {
            while (pos < s.length && s[pos] in " \t\r\n") pos++
        }

        fun value(): Any? {
            if (pos >= s.length) throw error("unexpected end")
            return when (val c = s[pos]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c in '0'..'9') num() else throw error("unexpected '$c'")
            }
        }

        fun literal(
            word: String,
            v: Any?,
        ): Any? {
            if (!s.startsWith(word, pos)) throw error("bad literal")
            pos += word.length
            return v
        }

        fun obj(): Map<String, Any?> {
            val m = LinkedHashMap<String, Any?>()
            pos++
            skipWs()
            if (peek() == '}') {
                pos++
                return m
            }
            while (true) {
                skipWs()
                if (peek() != '"') throw error("expected a key")
                val k = str()
                skipWs()
                expect(':')
                skipWs()
                m[k] = value()
                skipWs()
                when (next()) {
                    ',' -> continue
                    '}' -> return m
                    else -> throw error("expected ',' or '}'")
                }
            }
        }

        fun arr(): List<Any?> {
            val l = ArrayList<Any?>()
            pos++
            skipWs()
            if (peek() == ']') {
                pos++
                return l
            }
            while (true) {
                skipWs()
                l.add(value())
                skipWs()
                when (next()) {
                    ',' -> continue
                    ']' -> return l
                    else -> throw error("expected ',' or ']'")
                }
            }
        }

        fun str(): String {
            expect('"')
            val b = StringBuilder()
            while (true) {
                if (pos >= s.length) throw error("unterminated string")
                val c = s[pos++]
                when {
                    c == '"' -> {
                        return b.toString()
                    }

                    c == '\\' -> {
                        when (val e = next()) {
                            '"', '\\', '/' -> {
                                b.append(e)
                            }

                            'b' -> {
                                b.append('\b')
                            }

                            'f' -> {
                                b.append('\u000C')
                            }

                            'n' -> {
                                b.append('\n')
                            }

                            'r' -> {
                                b.append('\r')
                            }

                            't' -> {
                                b.append('\t')
                            }

                            'u' -> {
                                if (pos + 4 > s.length) throw error("bad \\u escape")
                                b.append(s.substring(pos, pos + 4).toInt(16).toChar())
                                pos += 4
                            }

                            else -> {
                                throw error("bad escape '\\$e'")
                            }
                        }
                    }

                    c < ' ' -> {
                        throw error("control character in string")
                    }

                    else -> {
                        b.append(c)
                    }
                }
            }
        }

        fun num(): Double {
            val start = pos
            if (peek() == '-') pos++
            while (pos < s.length && (s[pos].isDigit() || s[pos] in ".eE+-")) pos++
            val t = s.substring(start, pos)
            return t.toDoubleOrNull() ?: throw error("bad number '$t'")
        }

        fun peek(): Char = if (pos < s.length) s[pos] else '\u0000'

        fun next(): Char {
            if (pos >= s.length) throw error("unexpected end")
            return s[pos++]
        }

        fun expect(c: Char) {
            if (next() != c) {
                pos--
                throw error("expected '$c'")
            }
        }
    }
}
