/**
 * One warning per dead letter the engine records and per delivery it parks,
 * logged where it is recorded: the store and source the engine runs over are
 * wrapped once, at its entry (`Reconciler.run` / `runAll`), so a library user
 * of the engine sees the same lines as the service, and the service (which
 * runs the engine) sees each line once.
 *
 * A line names the projection, the event (id, type), its stream and revision,
 * its position, the quarantined document when there is one, and the whole
 * reason (every line of it). The log annotations carry the same fields for
 * structured formats.
 */
import { Effect, Stream } from "effect"
import type { Delivery, EventSource } from "../EventSource.js"
import type { DeadLetter, ReadModelStore } from "../ReadModelStore.js"

/** The line for a recorded dead letter. */
export const deadLetterLine = (letter: DeadLetter): string =>
  `dead-lettered: projection ${letter.projection}, event ${letter.eventId} (${letter.eventType}), ` +
  `stream ${letter.streamId} revision ${letter.revision}, position ${letter.position}` +
  (letter.document === undefined ? "" : `, document ${letter.document} quarantined`) +
  `: ${letter.reason}`

/** The store, logging a warning after each dead letter it has durably stored. */
export const loggingDeadLetters = (store: ReadModelStore["Type"]): ReadModelStore["Type"] => ({
  ...store,
  deadLetter: (letter) =>
    store.deadLetter(letter).pipe(
      Effect.zipRight(
        Effect.logWarning(deadLetterLine(letter)).pipe(
          Effect.annotateLogs({
            projection: letter.projection,
            event: letter.eventId,
            stream: letter.streamId,
            revision: String(letter.revision),
            ...(letter.document === undefined ? {} : { document: letter.document })
          })
        )
      )
    )
})

/** The source, logging a warning after each delivery of a consumer group is parked (persistent mode). */
export const loggingParks = (source: EventSource["Type"]): EventSource["Type"] => ({
  ...source,
  subscribe: (subscription) =>
    subscription.mode === "catch-up"
      ? source.subscribe(subscription)
      : Stream.map(source.subscribe(subscription), (delivery): Delivery => ({
        ...delivery,
        settle: (settlement) =>
          settlement._tag === "Nack" && settlement.action === "park"
            ? delivery.settle(settlement).pipe(
              Effect.zipRight(
                Effect.logWarning(
                  `parked: group ${subscription.group}, event ${delivery.id} (${delivery.type}), ` +
                    `stream ${delivery.streamId} revision ${delivery.revision}: ${settlement.reason}`
                ).pipe(Effect.annotateLogs({
                  group: subscription.group,
                  event: delivery.id,
                  stream: delivery.streamId,
                  revision: String(delivery.revision)
                }))
              )
            )
            : delivery.settle(settlement)
      }))
})
