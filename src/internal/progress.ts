/**
 * Progress on the console: a bar redrawn in place on a terminal, plain lines
 * (at most one per `every` of progress or per interval) otherwise.
 */

export interface ProgressLine {
  /** 0..1 */
  readonly fraction: number
  /** The text shown after the bar (or alone, on plain output). */
  readonly text: string
}

export interface Progress {
  readonly update: (line: ProgressLine) => void
  /** Ends the bar: the last line stays, the cursor goes to the next line. */
  readonly done: (line: ProgressLine) => void
}

const WIDTH = 30

/** The bar alone: `[#######-------]` drawn with block characters. */
export const bar = (fraction: number, width = WIDTH): string => {
  const clamped = Math.min(1, Math.max(0, Number.isFinite(fraction) ? fraction : 0))
  const eighths = Math.round(clamped * width * 8)
  const full = Math.floor(eighths / 8)
  const partial = eighths % 8
  const partials = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"]
  const body = "█".repeat(full) + (full < width ? partials[partial]! : "")
  return `▕${body.padEnd(width, " ")}▏`
}

/**
 * A progress display on `stream`: redrawn in place when it is a TTY, otherwise a
 * plain line whenever the progress moved by `every` (default 10 %) or at the end.
 */
export const make = (
  stream: NodeJS.WriteStream = process.stdout,
  options: { readonly every?: number } = {}
): Progress => {
  const tty = stream.isTTY === true
  const every = options.every ?? 0.1
  let lastPlain = -1
  let lastPlainText = ""
  const plain = (line: ProgressLine) => {
    const text = `${String(Math.floor(line.fraction * 100)).padStart(3)}% ${line.text}`
    if (text !== lastPlainText) stream.write(`${text}\n`)
    lastPlainText = text
  }
  let lastDrawn = ""
  const draw = (line: ProgressLine) => {
    const text = `${bar(line.fraction)} ${String(Math.floor(line.fraction * 100)).padStart(3)}% ${line.text}`
    const columns = stream.columns ?? 120
    const fitted = text.length > columns - 1 ? text.slice(0, columns - 1) : text
    if (fitted === lastDrawn) return
    lastDrawn = fitted
    stream.write(`\r\x1b[2K${fitted}`)
  }
  return {
    update: (line) => {
      if (tty) return draw(line)
      const step = Math.floor(line.fraction / every)
      if (step > lastPlain) {
        lastPlain = step
        plain(line)
      }
    },
    done: (line) => {
      if (tty) {
        draw(line)
        stream.write("\n")
      } else if (Math.floor(line.fraction / every) > lastPlain || lastPlainText === "") {
        plain(line)
      }
    }
  }
}
