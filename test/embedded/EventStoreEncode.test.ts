/**
 * The embedded EventStoreDB's hand-written `ReadResp` encoding: for any record
 * (event, link, both, or an unresolved link; empty or non-empty data and
 * metadata; zero and large revisions; multi-byte names; both UUID forms) the
 * bytes are exactly those the generated protocol classes serialize, for the
 * streams' `ReadResp` and (with a retry count) the persistent subscriptions' one.
 */
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { readEventResp } from "../../src/embedded/eventstore/encode.js"
import { load, persistent, streams } from "../../src/embedded/eventstore/proto.js"
import type { EventRecord, Resolved } from "../../src/embedded/eventstore/Store.js"
import { fillReadEvent, type UuidForm } from "../../src/embedded/eventstore/wire.js"
import { propertySeed } from "../support/ledger.js"

load()

const generated = (resolved: Resolved, form: UuidForm): Uint8Array => {
  const resp = new streams.ReadResp()
  resp.setEvent(fillReadEvent(new streams.ReadResp.ReadEvent(), resolved, streams.ReadResp.ReadEvent.RecordedEvent, form))
  return resp.serializeBinary()
}

/** The persistent subscriptions' `ReadResp`, as the generated classes serialize it. */
const generatedPersistent = (resolved: Resolved, form: UuidForm, retryCount: number): Uint8Array => {
  const resp = new persistent.ReadResp()
  const event = fillReadEvent(new persistent.ReadResp.ReadEvent(), resolved, persistent.ReadResp.ReadEvent.RecordedEvent, form)
  event.setRetryCount(retryCount)
  resp.setEvent(event)
  return resp.serializeBinary()
}

const record: fc.Arbitrary<EventRecord> = fc.record({
  id: fc.uuid(),
  streamId: fc.oneof(fc.string({ maxLength: 40 }), fc.constant("$ce-ordér"), fc.string({ minLength: 200, maxLength: 300 })),
  revision: fc.oneof(fc.constant(0n), fc.bigInt({ min: 0n, max: 2n ** 53n - 1n })),
  position: fc.bigInt({ min: 1n, max: 2n ** 53n - 1n }),
  type: fc.oneof(fc.constant("$>"), fc.string({ maxLength: 30 })),
  contentType: fc.constantFrom("application/json", "application/octet-stream", ""),
  data: fc.uint8Array({ maxLength: 600 }),
  metadata: fc.uint8Array({ maxLength: 20 }),
  created: fc.bigInt({ min: 0n, max: 2n ** 62n })
})

const resolved: fc.Arbitrary<Resolved> = fc.oneof(
  record.map((event) => ({ event, position: event.position })),
  fc.tuple(record, record).map(([event, link]) => ({ event, link, position: link.position })),
  record.map((link) => ({ link, position: link.position }))
)

describe("ReadResp encoding", () => {
  const seed = propertySeed("eventstore-encode")
  it.prop(
    "is byte for byte what the generated classes serialize",
    [resolved, fc.constantFrom<UuidForm>("string", "structured")],
    ([r, form]) => {
      expect(new Uint8Array(readEventResp(r, form))).toEqual(generated(r, form))
    },
    { fastCheck: { seed, numRuns: 300 } }
  )

  it.prop(
    "with a retry count, is byte for byte the persistent subscriptions' ReadResp",
    [resolved, fc.constantFrom<UuidForm>("string", "structured"), fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 2 ** 31 - 1 }))],
    ([r, form, retryCount]) => {
      expect(new Uint8Array(readEventResp(r, form, retryCount))).toEqual(generatedPersistent(r, form, retryCount))
    },
    { fastCheck: { seed, numRuns: 300 } }
  )
})
