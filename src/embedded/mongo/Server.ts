/**
 * The TCP side: accepts connections on 127.0.0.1, frames and decodes messages,
 * runs commands on the {@link Engine} in arrival order, and serves the streaming
 * ("awaitable") hello the driver's monitor uses, with `moreToCome` replies.
 *
 * @internal
 */
import * as net from "node:net"
import type { Engine } from "./Commands.js"
import type { Transaction } from "./Storage.js"
import { EXHAUST_ALLOWED, Framer, MORE_TO_COME, OP_MSG, decode, encodeMsg, encodeReply } from "./Wire.js"
import { num } from "./Values.js"

/** A listening wire server; `close` destroys every connection and clears their timers. */
export class WireServer {
  private readonly server: net.Server
  private readonly sockets = new Set<net.Socket>()
  /** Writes waiting for transactions, by connection: woken when the connection closes. */
  private readonly wakers = new Map<net.Socket, Set<() => void>>()
  private nextRequest = 1

  constructor(readonly engine: Engine) {
    this.server = net.createServer((socket) => this.accept(socket))
  }

  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(e)
      this.server.once("error", onError)
      this.server.listen(port, host, () => {
        this.server.off("error", onError)
        const address = this.server.address()
        resolve(typeof address === "object" && address !== null ? address.port : port)
      })
    })
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      for (const s of this.sockets) s.destroy()
      this.sockets.clear()
      this.server.close(() => resolve())
    })
  }

  private accept(socket: net.Socket): void {
    this.sockets.add(socket)
    socket.setNoDelay(true)
    const framer = new Framer()
    const connectionId = this.engine.connectionId()
    const timers = new Set<NodeJS.Timeout>()
    const cleanup = () => {
      for (const t of timers) clearTimeout(t)
      timers.clear()
      for (const wake of this.wakers.get(socket) ?? []) wake()
      this.wakers.delete(socket)
      this.sockets.delete(socket)
    }
    socket.on("close", cleanup)
    socket.on("error", () => socket.destroy())
    // Messages of one connection run in order; a write waiting for a transaction holds back only its connection.
    let queue: Promise<void> = Promise.resolve()
    socket.on("data", (chunk: Buffer) => {
      let messages: Array<Buffer>
      try {
        messages = framer.push(chunk)
      } catch {
        socket.destroy()
        return
      }
      for (const message of messages) {
        queue = queue.then(() => (socket.destroyed ? undefined : this.handle(socket, message, connectionId, timers))).catch(() => {
          socket.destroy()
        })
      }
    })
  }

  /** Resolves when all `blockers` ended, or when the oldest may have expired (then expires it). */
  private waitFor(socket: net.Socket, blockers: ReadonlyArray<Transaction>, timers: Set<NodeJS.Timeout>): Promise<void> {
    return new Promise((resolve) => {
      let wakers = this.wakers.get(socket)
      if (wakers === undefined) {
        wakers = new Set()
        this.wakers.set(socket, wakers)
      }
      let pending = blockers.length
      const oldest = Math.min(...blockers.map((t) => t.startedAt))
      const timer = setTimeout(() => done(), Math.max(0, oldest + this.engine.options.transactionLifetimeMs - Date.now()) + 1)
      timer.unref()
      timers.add(timer)
      let finished = false
      const done = () => {
        if (finished) return
        finished = true
        clearTimeout(timer)
        timers.delete(timer)
        wakers.delete(done)
        this.engine.storage.expire(this.engine.options.transactionLifetimeMs)
        resolve()
      }
      wakers.add(done)
      for (const t of blockers) t.onEnd.push(() => (--pending === 0 ? done() : undefined))
    })
  }

  private async handle(socket: net.Socket, message: Buffer, connectionId: number, timers: Set<NodeJS.Timeout>): Promise<void> {
    const request = decode(message)
    const db = request.legacy
      ? (request.collection ?? "admin.$cmd").split(".")[0]!
      : typeof request.command.$db === "string"
        ? request.command.$db
        : "admin"
    const name = Object.keys(request.command)[0]
    const awaitable =
      !request.legacy &&
      (name === "hello" || name === "isMaster" || name === "ismaster") &&
      request.command.topologyVersion !== undefined &&
      request.command.maxAwaitTimeMS !== undefined
    if (awaitable) {
      // Streaming monitoring: our topology never changes, so answer after maxAwaitTimeMS, and keep
      // answering (moreToCome) while the client allows exhaust.
      const wait = Math.max(0, num(request.command.maxAwaitTimeMS, 10_000))
      const exhaust = (request.flags & EXHAUST_ALLOWED) !== 0
      let responseTo = request.header.requestId
      const tick = () => {
        const t = setTimeout(() => {
          timers.delete(t)
          if (socket.destroyed) return
          const requestId = this.nextRequest++
          const reply = this.engine.hello(request.command, connectionId, false)
          socket.write(encodeMsg(requestId, responseTo, reply, exhaust ? MORE_TO_COME : 0))
          responseTo = requestId
          if (exhaust) tick()
        }, wait)
        t.unref()
        timers.add(t)
      }
      tick()
      return
    }
    for (let blockers = this.engine.blockers(request.command, db); blockers.length > 0; blockers = this.engine.blockers(request.command, db)) {
      await this.waitFor(socket, blockers, timers)
      if (socket.destroyed) return
    }
    const reply = this.engine.run(request.command, db, connectionId, request.legacy)
    const requestId = this.nextRequest++
    if (request.header.opCode === OP_MSG) {
      if ((request.flags & MORE_TO_COME) !== 0) return // fire-and-forget (w: 0)
      socket.write(encodeMsg(requestId, request.header.requestId, reply))
    } else socket.write(encodeReply(requestId, request.header.requestId, reply))
  }
}
