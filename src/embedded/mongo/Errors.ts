/**
 * Server-side command errors with MongoDB's codes, code names and labels.
 *
 * @internal
 */
import type { Doc } from "./Values.js"

/** A command failure as the real server reports it (`ok: 0`, `code`, `codeName`, `errmsg`). */
export class CommandError extends Error {
  constructor(
    readonly code: number,
    readonly codeName: string,
    message: string,
    readonly labels: ReadonlyArray<string> = [],
    readonly extra: Doc = {}
  ) {
    super(message)
  }

  toReply(): Doc {
    return {
      ok: 0,
      errmsg: this.message,
      code: this.code,
      codeName: this.codeName,
      ...this.extra,
      ...(this.labels.length > 0 ? { errorLabels: [...this.labels] } : {})
    }
  }
}

export const badValue = (message: string) => new CommandError(2, "BadValue", message)
export const failedToParse = (message: string) => new CommandError(9, "FailedToParse", message)
export const commandNotFound = (name: string) =>
  new CommandError(59, "CommandNotFound", `no such command: '${name}'`)
export const namespaceNotFound = (ns: string) => new CommandError(26, "NamespaceNotFound", `ns not found: ${ns}`)
export const namespaceExists = (ns: string) =>
  new CommandError(48, "NamespaceExists", `Collection ${ns} already exists.`)
export const cursorNotFound = (id: unknown) => new CommandError(43, "CursorNotFound", `cursor id ${String(id)} not found`)
export const writeConflict = () =>
  new CommandError(
    112,
    "WriteConflict",
    "Write conflict during plan execution and yielding is disabled. :: Please retry your operation or multi-document transaction.",
    ["TransientTransactionError"]
  )
export const noSuchTransaction = (txnNumber: number) =>
  new CommandError(251, "NoSuchTransaction", `Transaction with { txnNumber: ${txnNumber} } has been aborted.`, [
    "TransientTransactionError"
  ])
export const immutableField = (message: string) => new CommandError(66, "ImmutableField", message)
export const indexNotFound = (name: string) => new CommandError(27, "IndexNotFound", `index not found with name [${name}]`)
export const illegalOperation = (message: string) => new CommandError(20, "IllegalOperation", message)

/** A duplicate key (11000), with `keyPattern` and `keyValue` as the driver expects. */
export class DuplicateKey extends CommandError {
  constructor(ns: string, indexName: string, keyPattern: Doc, keyValue: Doc) {
    super(
      11000,
      "DuplicateKey",
      `E11000 duplicate key error collection: ${ns} index: ${indexName} dup key: ${JSON.stringify(keyValue)}`,
      [],
      { keyPattern, keyValue }
    )
  }
}

/** Any thrown value as a command error (mingo errors become BadValue). */
export const toCommandError = (e: unknown): CommandError =>
  e instanceof CommandError ? e : new CommandError(2, "BadValue", e instanceof Error ? e.message : String(e))
