/**
 * One logger for the command line, the service and the examples, configured
 * from the environment:
 *
 * - `RECONCILER_LOG_FORMAT`: `logfmt` (default; Effect's own line format),
 *   `json` (one object per line, for log shippers) or `pretty` (for people at a
 *   terminal);
 * - `RECONCILER_LOG_LEVEL`: `All`, `Trace`, `Debug`, `Info` (default),
 *   `Warning`, `Error`, `Fatal` or `None`.
 *
 * Secrets never appear: connection strings travel as `Redacted` values (which
 * every format prints as `<redacted>`), and as a second line of defence the
 * user-info part of any URL in a message (`scheme://user:password@host`) is
 * masked before the line is written.
 *
 * @since 0.1.0
 */
import { Cause, Config, ConfigError, Effect, HashMap, Layer, Logger, LogLevel } from "effect"

/** The log line formats. @since 0.1.0 */
export type Format = "json" | "pretty" | "logfmt"

/** @since 0.1.0 */
export interface Options {
  readonly format: Format
  readonly level: LogLevel.LogLevel
}

/**
 * `RECONCILER_LOG_FORMAT` and `RECONCILER_LOG_LEVEL`, with defaults (unless
 * given: `logfmt` and `Info`).
 *
 * @since 0.1.0
 */
export const config = (defaults: Partial<Options> = {}): Config.Config<Options> =>
  Config.all({
    format: Config.literal("json", "pretty", "logfmt")("RECONCILER_LOG_FORMAT").pipe(
      Config.withDefault(defaults.format ?? "logfmt")
    ),
    level: Config.logLevel("RECONCILER_LOG_LEVEL").pipe(Config.withDefault(defaults.level ?? LogLevel.Info))
  })

// `scheme://user:password@host` → `scheme://<redacted>@host`; the user alone may be a secret too.
const userInfo = /([a-z][a-z0-9+.-]*:\/\/)[^/@\s"']+@/gi

/**
 * Masks the user-info part of every URL in `text`.
 *
 * @since 0.1.0
 */
export const maskCredentials = (text: string): string => text.replace(userInfo, "$1<redacted>@")

const maskValue = (value: unknown): unknown =>
  typeof value === "string"
    ? maskCredentials(value)
    : Array.isArray(value)
    ? value.map(maskValue)
    : value instanceof Error
    ? maskError(value)
    : value

/** Masks messages, annotations and the cause's error messages before any format sees them. */
const masked = <O>(logger: Logger.Logger<unknown, O>): Logger.Logger<unknown, O> =>
  Logger.mapInputOptions(logger, (options) => {
    return {
      ...options,
      message: maskValue(options.message),
      annotations: HashMap.map(options.annotations, maskValue),
      cause: Cause.isEmpty(options.cause) ? options.cause : Cause.map(options.cause, maskError)
    }
  })

const maskError = (error: unknown): unknown => {
  if (typeof error === "string") return maskCredentials(error)
  if (error instanceof Error) {
    const message = maskCredentials(error.message)
    if (message === error.message) return error
    const copy = new Error(message)
    Object.defineProperty(copy, "name", { value: error.name, enumerable: false, configurable: true, writable: true })
    if (error.stack !== undefined) copy.stack = maskCredentials(error.stack)
    return copy
  }
  return error
}

/**
 * The logger for a format, writing one line per entry to standard output.
 *
 * @since 0.1.0
 */
export const logger = (format: Format): Logger.Logger<unknown, void> => {
  switch (format) {
    case "json":
      return Logger.withConsoleLog(Logger.map(masked(Logger.jsonLogger), maskCredentials))
    case "logfmt":
      return Logger.withConsoleLog(Logger.map(masked(Logger.logfmtLogger), maskCredentials))
    case "pretty":
      return masked(Logger.prettyLogger())
  }
}

/**
 * Replaces Effect's default logger with the chosen format and sets the
 * minimum level.
 *
 * @since 0.1.0
 */
export const layer = (options: Options): Layer.Layer<never> =>
  Layer.merge(Logger.replace(Logger.defaultLogger, logger(options.format)), Logger.minimumLogLevel(options.level))

/**
 * {@link layer} from {@link config} (with these defaults). A bad value is a `ConfigError`.
 *
 * @since 0.1.0
 */
export const layerConfig = (defaults: Partial<Options> = {}): Layer.Layer<never, ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.map(config(defaults), layer))
