/**
 * The server's open streaming calls, so that shutdown can end each one as a
 * real server's clients see it: with `UNAVAILABLE` (the clients reconnect on
 * it), not with a cancellation.
 *
 * Internal to the embedded server.
 */
import * as grpc from "@grpc/grpc-js"
import { statusError } from "./wire.js"

export class OpenCalls {
  private readonly ends = new Set<(status: ReturnType<typeof statusError>) => void>()
  private closing = false

  /**
   * Tracks a call until it ends. `end` must finish the call with the given
   * status (once). Returns the function that stops tracking it.
   */
  track(end: (status: ReturnType<typeof statusError>) => void): () => void {
    if (this.closing) {
      end(unavailable())
      return () => {}
    }
    this.ends.add(end)
    return () => {
      this.ends.delete(end)
    }
  }

  /** Whether shutdown has begun (new calls are refused). */
  get isClosing(): boolean {
    return this.closing
  }

  /** Ends every open call with `UNAVAILABLE`; later calls are ended at once. */
  shutdown(): void {
    this.closing = true
    const ends = [...this.ends]
    this.ends.clear()
    for (const end of ends) end(unavailable())
  }
}

const unavailable = () => statusError(grpc.status.UNAVAILABLE, undefined, "Server is shutting down.")
