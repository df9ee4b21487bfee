/**
 * Connection strings checked with the clients' own parsers before anything
 * connects, so that a typo is a configuration error naming the variable (exit
 * code 2 from the command line) instead of a connection failure minutes later.
 * The messages never repeat the connection string: it may carry a password.
 */
import { Config, ConfigError, Either, Redacted } from "effect"
import { MongoClient } from "mongodb"
import { createRequire } from "node:module"

/** `kurrentdb://`, `kurrent://` (and `+discover`) are the KurrentDB client's; anything else is the 6.x client's. */
const KURRENT_SCHEME = /^\s*kurrent(db)?(\+discover)?:\/\//i

const require = createRequire(import.meta.url)

/**
 * The connection-string parser of the client package `value` selects, loaded on
 * first use: the two packages' generated protobuf code registers on one global
 * namespace, so a process loads only the one it connects with (loading a parser
 * loads its package's protocol code).
 */
const parserFor = (value: string): ((connectionString: string) => unknown) | string => {
  const kurrent = KURRENT_SCHEME.test(value)
  const pkg = kurrent ? "@kurrent/kurrentdb-client" : "@eventstore/db-client"
  try {
    return (require(`${pkg}/dist/Client/parseConnectionString.js`) as {
      parseConnectionString: (connectionString: string) => unknown
    }).parseConnectionString
  } catch (error) {
    return (error as { code?: unknown } | null)?.code === "MODULE_NOT_FOUND"
      ? `this connection string needs the ${pkg} package: npm install ${pkg}`
      : `cannot load the parser of ${pkg}: ${error instanceof Error ? error.message : String(error)}`
  }
}

/** Why `value` is not an EventStoreDB / KurrentDB connection string, or undefined when it is one. */
export const eventStoreProblem = (value: string): string | undefined => {
  const parse = parserFor(value)
  if (typeof parse === "string") return parse
  const warnings: Array<string> = []
  const warn = console.warn
  // The parser warns (printing the whole string, password included) about options
  // it ignores: capture that and report the option instead.
  console.warn = (...args: Array<unknown>) => void warnings.push(args.map(String).join(" "))
  try {
    parse(value)
  } catch (error) {
    const text = error instanceof Error ? error.message : String(error)
    // `Unexpected "<piece of the string>" at position N, expected X.`: keep the position and the expectation.
    const parsed = text.match(/at position (\d+), expected (.*?)\.?$/)
    return parsed
      ? `not a valid connection string: at character ${parsed[1]}, expected ${parsed[2]}`
      : "not a valid connection string"
  } finally {
    console.warn = warn
  }
  const unknown = warnings.map((w) => w.match(/Unknown option key "([^"]+)"/)?.[1]).filter((k) => k !== undefined)
  return unknown.length > 0 ? `unknown option ${unknown.map((k) => `"${k}"`).join(", ")} in the connection string` : undefined
}

/** Why `value` is not a MongoDB connection string, or undefined when it is one (the driver's own parser; no connection). */
export const mongoProblem = (value: string): string | undefined => {
  try {
    new MongoClient(value)
    return undefined
  } catch (error) {
    const text = error instanceof Error ? error.message : String(error)
    return `not a valid connection string: ${scrub(text, value)}`
  }
}

/** The message without the connection string or its credentials, should the parser have quoted them. */
const scrub = (text: string, value: string): string => {
  const credentials = value.match(/^[^:]+:\/\/([^@/]*)@/)?.[1]
  let out = text.split(value).join("<redacted>")
  if (credentials) out = out.split(credentials).join("<credentials>")
  return out
}

/** A redacted connection string read from `name` and checked with `problem`: a bad one is `InvalidData` naming `name`. */
export const checked = (name: string, problem: (value: string) => string | undefined) =>
  Config.redacted(name).pipe(
    Config.mapOrFail((value) => {
      const found = problem(Redacted.value(value))
      return found === undefined ? Either.right(value) : Either.left(ConfigError.InvalidData([name], found))
    })
  )
