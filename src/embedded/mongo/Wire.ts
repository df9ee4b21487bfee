/**
 * The MongoDB wire protocol: message framing, OP_MSG (with document sequences),
 * legacy OP_QUERY requests and OP_REPLY responses. Compression is not supported
 * (and never advertised).
 *
 * @internal
 */
import { deserialize, serialize } from "bson"
import type { Doc } from "./Values.js"

export const OP_REPLY = 1
export const OP_QUERY = 2004
export const OP_COMPRESSED = 2012
export const OP_MSG = 2013

export const MORE_TO_COME = 1 << 1
export const EXHAUST_ALLOWED = 1 << 16
const CHECKSUM_PRESENT = 1

/** Raw documents keep their BSON numeric types (see Values.ts). */
const decodeOptions = { promoteValues: false, validation: { utf8: false } } as const

export interface Header {
  readonly length: number
  readonly requestId: number
  readonly responseTo: number
  readonly opCode: number
}

/** A decoded request: the command document with document sequences merged in as arrays. */
export interface Request {
  readonly header: Header
  readonly command: Doc
  readonly legacy: boolean
  readonly flags: number
  /** For OP_QUERY: the full collection name (`admin.$cmd`). */
  readonly collection?: string
}

/** Splits a byte stream into whole messages (chunks are joined once per message, not per chunk). */
export class Framer {
  private buffers: Array<Buffer> = []
  private size = 0
  private expected: number | undefined = undefined

  push(chunk: Buffer): Array<Buffer> {
    this.buffers.push(chunk)
    this.size += chunk.length
    const out: Array<Buffer> = []
    for (;;) {
      if (this.expected === undefined) {
        if (this.size < 4) break
        if (this.buffers[0]!.length < 4) this.buffers = [Buffer.concat(this.buffers, this.size)]
        const length = this.buffers[0]!.readInt32LE(0)
        if (length < 16 || length > 48_000_000) throw new Error(`invalid message length ${length}`)
        this.expected = length
      }
      if (this.size < this.expected) break
      const all = this.buffers.length === 1 ? this.buffers[0]! : Buffer.concat(this.buffers, this.size)
      out.push(all.subarray(0, this.expected))
      const rest = all.subarray(this.expected)
      this.buffers = rest.length > 0 ? [rest] : []
      this.size = rest.length
      this.expected = undefined
    }
    return out
  }
}

const readCString = (buf: Buffer, offset: number): [string, number] => {
  const end = buf.indexOf(0, offset)
  if (end < 0) throw new Error("unterminated cstring")
  return [buf.toString("utf8", offset, end), end + 1]
}

/** Decodes one framed message. */
export const decode = (msg: Buffer): Request => {
  const header: Header = {
    length: msg.readInt32LE(0),
    requestId: msg.readInt32LE(4),
    responseTo: msg.readInt32LE(8),
    opCode: msg.readInt32LE(12)
  }
  if (header.opCode === OP_MSG) {
    const flags = msg.readUInt32LE(16)
    const end = flags & CHECKSUM_PRESENT ? msg.length - 4 : msg.length
    let offset = 20
    let command: Doc | undefined
    const sequences: Array<[string, Array<Doc>]> = []
    while (offset < end) {
      const kind = msg.readUInt8(offset)
      offset += 1
      if (kind === 0) {
        const size = msg.readInt32LE(offset)
        command = deserialize(msg.subarray(offset, offset + size), decodeOptions) as Doc
        offset += size
      } else if (kind === 1) {
        const size = msg.readInt32LE(offset)
        const sectionEnd = offset + size
        const [identifier, next] = readCString(msg, offset + 4)
        let p = next
        const docs: Array<Doc> = []
        while (p < sectionEnd) {
          const docSize = msg.readInt32LE(p)
          docs.push(deserialize(msg.subarray(p, p + docSize), decodeOptions) as Doc)
          p += docSize
        }
        sequences.push([identifier, docs])
        offset = sectionEnd
      } else throw new Error(`unknown OP_MSG section kind ${kind}`)
    }
    if (command === undefined) throw new Error("OP_MSG without a body section")
    for (const [identifier, docs] of sequences) command[identifier] = docs
    return { header, command, legacy: false, flags }
  }
  if (header.opCode === OP_QUERY) {
    const flags = msg.readInt32LE(16)
    const [collection, next] = readCString(msg, 20)
    const offset = next + 8
    const size = msg.readInt32LE(offset)
    let command = deserialize(msg.subarray(offset, offset + size), decodeOptions) as Doc
    // Legacy wrapped form: { $query: {...}, $readPreference: ... }
    if ("$query" in command && typeof command.$query === "object") command = command.$query as Doc
    return { header, command, legacy: true, flags, collection }
  }
  throw new Error(`unsupported opCode ${header.opCode}`)
}

const writeHeader = (buf: Buffer, requestId: number, responseTo: number, opCode: number) => {
  buf.writeInt32LE(buf.length, 0)
  buf.writeInt32LE(requestId, 4)
  buf.writeInt32LE(responseTo, 8)
  buf.writeInt32LE(opCode, 12)
}

/** An OP_MSG reply with one body section. */
export const encodeMsg = (requestId: number, responseTo: number, body: Doc, flags = 0): Buffer => {
  const bson = serialize(body)
  const buf = Buffer.allocUnsafe(16 + 4 + 1 + bson.length)
  writeHeader(buf, requestId, responseTo, OP_MSG)
  buf.writeUInt32LE(flags, 16)
  buf.writeUInt8(0, 20)
  buf.set(bson, 21)
  return buf
}

/** A legacy OP_REPLY with one document (answers an OP_QUERY handshake). */
export const encodeReply = (requestId: number, responseTo: number, body: Doc): Buffer => {
  const bson = serialize(body)
  const buf = Buffer.allocUnsafe(16 + 20 + bson.length)
  writeHeader(buf, requestId, responseTo, OP_REPLY)
  buf.writeInt32LE(8, 16) // AwaitCapable
  buf.writeBigInt64LE(0n, 20)
  buf.writeInt32LE(0, 28)
  buf.writeInt32LE(1, 32)
  buf.set(bson, 36)
  return buf
}
