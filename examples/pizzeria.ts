/**
 * The pizzeria: an order's lifecycle as events, two read models kept by the
 * reconciler.
 *
 * - `orders`: one document per order (customer, pizzas, total, status);
 * - `kitchen`: one dashboard document fed by every order (how many orders are
 *   in each stage right now).
 *
 * Run it with `npx tsx examples/pizzeria.ts`: it starts the embedded
 * EventStoreDB and MongoDB servers (or uses `EVENTSTORE_CONNECTION_STRING` /
 * `MONGODB_URI`), appends a few orders, runs the projections until they have
 * caught up and prints the read models. `reconciler run --module
 * examples/pizzeria.ts` runs the same projections as a service.
 */
import { Console, Context, Effect, Layer, Redacted, Schema } from "effect"
import { MongoClient } from "mongodb"
import { pathToFileURL } from "node:url"
import * as App from "../src/App.js"
import * as Appender from "../src/Appender.js"
import * as Logging from "../src/Logging.js"
import { Projection } from "../src/index.js"

// ---- events: one stream per order, `order-<id>` --------------------------------

const OrderId = Schema.String

/** Every event of an order's lifecycle, by type. */
export const OrderEvents = {
  OrderCreated: Schema.Struct({ orderId: OrderId, customer: Schema.String, address: Schema.String }),
  PizzaAdded: Schema.Struct({ orderId: OrderId, pizza: Schema.String, price: Schema.Number }),
  PizzaRemoved: Schema.Struct({ orderId: OrderId, pizza: Schema.String }),
  OrderConfirmed: Schema.Struct({ orderId: OrderId }),
  CookingStarted: Schema.Struct({ orderId: OrderId }),
  OrderReady: Schema.Struct({ orderId: OrderId }),
  OutForDelivery: Schema.Struct({ orderId: OrderId, courier: Schema.String }),
  OrderDelivered: Schema.Struct({ orderId: OrderId }),
  /** Only orders not in the oven yet can be cancelled; `confirmed` says whether the kitchen had it queued. */
  OrderCancelled: Schema.Struct({ orderId: OrderId, reason: Schema.String, confirmed: Schema.Boolean })
}

/** The stages an order goes through. */
export const Status = Schema.Literal(
  "created",
  "confirmed",
  "cooking",
  "ready",
  "out-for-delivery",
  "delivered",
  "cancelled"
)
export type Status = typeof Status.Type

// ---- read model 1: orders ------------------------------------------------------

export const Order = Schema.Struct({
  customer: Schema.String,
  address: Schema.String,
  pizzas: Schema.Array(Schema.Struct({ pizza: Schema.String, price: Schema.Number })),
  total: Schema.Number,
  status: Status,
  courier: Schema.optional(Schema.String)
})
export type Order = typeof Order.Type

/** Which status each lifecycle event moves an order to. */
const statusAfter = {
  OrderConfirmed: "confirmed",
  CookingStarted: "cooking",
  OrderReady: "ready",
  OutForDelivery: "out-for-delivery",
  OrderDelivered: "delivered",
  OrderCancelled: "cancelled"
} as const satisfies Partial<Record<keyof typeof OrderEvents, Status>>

/** One document per order. */
export const orders = Projection.make({
  name: "orders",
  categories: ["order"],
  document: Order,
  events: OrderEvents,
  key: (event) => event.data.orderId,
  evolve: (order, event): Order | undefined => {
    switch (event.type) {
      case "OrderCreated":
        return { customer: event.data.customer, address: event.data.address, pizzas: [], total: 0, status: "created" }
      case "PizzaAdded": {
        if (order === undefined) return order
        const pizzas = [...order.pizzas, { pizza: event.data.pizza, price: event.data.price }]
        return { ...order, pizzas, total: sum(pizzas) }
      }
      case "PizzaRemoved": {
        if (order === undefined) return order
        const at = order.pizzas.findIndex((p) => p.pizza === event.data.pizza)
        const pizzas = at < 0 ? order.pizzas : order.pizzas.filter((_, i) => i !== at)
        return { ...order, pizzas, total: sum(pizzas) }
      }
      case "OutForDelivery":
        return order && { ...order, status: statusAfter[event.type], courier: event.data.courier }
      default:
        return order && { ...order, status: statusAfter[event.type] }
    }
  }
})

const sum = (pizzas: ReadonlyArray<{ readonly price: number }>) =>
  Math.round(pizzas.reduce((total, p) => total + p.price, 0) * 100) / 100

// ---- read model 2: the kitchen dashboard ----------------------------------------

export const Kitchen = Schema.Struct({
  /** Orders being put together by the customer. */
  open: Schema.Number,
  /** Confirmed, waiting for an oven. */
  queued: Schema.Number,
  inOven: Schema.Number,
  awaitingCourier: Schema.Number,
  onTheRoad: Schema.Number,
  delivered: Schema.Number,
  cancelled: Schema.Number
})
export type Kitchen = typeof Kitchen.Type

const emptyKitchen: Kitchen = { open: 0, queued: 0, inOven: 0, awaitingCourier: 0, onTheRoad: 0, delivered: 0, cancelled: 0 }

/** How each event moves an order between the dashboard's columns: `[from, to]`. */
const moves = {
  OrderCreated: [undefined, "open"],
  OrderConfirmed: ["open", "queued"],
  CookingStarted: ["queued", "inOven"],
  OrderReady: ["inOven", "awaitingCourier"],
  OutForDelivery: ["awaitingCourier", "onTheRoad"],
  OrderDelivered: ["onTheRoad", "delivered"]
} as const

/**
 * One dashboard document fed by every order: every event of the kitchen's
 * interest has the same key, so they all apply in order in one lane. Events
 * it does not declare (pizzas added or removed) are skipped by decision.
 */
export const kitchen = Projection.make({
  name: "kitchen",
  categories: ["order"],
  document: Kitchen,
  events: {
    OrderCreated: OrderEvents.OrderCreated,
    OrderConfirmed: OrderEvents.OrderConfirmed,
    CookingStarted: OrderEvents.CookingStarted,
    OrderReady: OrderEvents.OrderReady,
    OutForDelivery: OrderEvents.OutForDelivery,
    OrderDelivered: OrderEvents.OrderDelivered,
    OrderCancelled: OrderEvents.OrderCancelled
  },
  key: () => "kitchen",
  evolve: (dashboard = emptyKitchen, event) => {
    const [from, to] = event.type === "OrderCancelled"
      ? [event.data.confirmed ? "queued" : "open", "cancelled"] as const
      : moves[event.type]
    const next = { ...dashboard, [to]: dashboard[to] + 1 }
    return from === undefined ? next : { ...next, [from]: next[from] - 1 }
  }
})

/** The example's projections, as `reconciler run --module examples/pizzeria.ts` finds them. */
export const projections = [orders, kitchen]

// ---- a sample day ----------------------------------------------------------------

/** A few orders through their lifecycle, as `[stream, events]`. */
export const sampleOrders = (): Array<readonly [string, Array<{ type: keyof typeof OrderEvents; data: Record<string, string | number | boolean> }>]> => {
  const menu = [["margherita", 8.5], ["diavola", 10], ["quattro formaggi", 11.5], ["marinara", 7]] as const
  const stories: Array<Array<keyof typeof OrderEvents>> = [
    ["OrderCreated", "PizzaAdded", "PizzaAdded", "OrderConfirmed", "CookingStarted", "OrderReady", "OutForDelivery", "OrderDelivered"],
    ["OrderCreated", "PizzaAdded", "PizzaAdded", "PizzaRemoved", "OrderConfirmed", "CookingStarted", "OrderReady"],
    ["OrderCreated", "PizzaAdded", "OrderCancelled"],
    ["OrderCreated", "PizzaAdded", "PizzaAdded", "OrderConfirmed", "CookingStarted"],
    ["OrderCreated", "PizzaAdded", "OrderConfirmed", "OrderCancelled"],
    ["OrderCreated", "PizzaAdded", "PizzaAdded", "PizzaAdded", "OrderConfirmed", "CookingStarted", "OrderReady", "OutForDelivery"],
    ["OrderCreated"]
  ]
  return stories.map((story, n) => {
    const orderId = `o${n + 1}`
    let added = 0
    const events = story.map((type) => {
      switch (type) {
        case "OrderCreated":
          return { type, data: { orderId, customer: `customer ${n + 1}`, address: `${n + 1} Via Roma` } }
        case "PizzaAdded": {
          const [pizza, price] = menu[(n + added++) % menu.length]!
          return { type, data: { orderId, pizza, price } }
        }
        case "PizzaRemoved":
          return { type, data: { orderId, pizza: menu[n % menu.length]![0] } }
        case "OutForDelivery":
          return { type, data: { orderId, courier: "Gino" } }
        case "OrderCancelled":
          return { type, data: { orderId, reason: "changed their mind", confirmed: story.includes("OrderConfirmed") } }
        default:
          return { type, data: { orderId } }
      }
    })
    return [`order-${orderId}`, events] as const
  })
}

// ---- the app -----------------------------------------------------------------------

/** Appends the sample orders, runs the projections until caught up, prints the read models. */
const main = Effect.gen(function*() {
  const endpoints = yield* App.Endpoints
  yield* Console.log(App.describeEndpoints(endpoints))
  // Through the project's client (either package, by the connection string's scheme).
  const appender = yield* Layer.build(Appender.layer({ connectionString: endpoints.eventStore.connectionString })).pipe(
    Effect.map(Context.get(Appender.Appender))
  )
  for (const [stream, events] of sampleOrders()) yield* appender.append(stream, events)
  yield* App.runUntilCaughtUp(projections)

  const mongo = yield* Effect.acquireRelease(
    Effect.promise(() => new MongoClient(Redacted.value(endpoints.mongo.uri)).connect()),
    (mongo) => Effect.promise(() => mongo.close())
  )
  const db = mongo.db(endpoints.mongo.database)
  const show = { projection: { _reconciler: 0 } }
  yield* Console.log("orders:")
  for (const order of yield* Effect.promise(() => db.collection("orders").find({}, show).sort({ _id: 1 }).toArray())) {
    yield* Console.log(" ", JSON.stringify(order))
  }
  const dashboard = yield* Effect.promise(() => db.collection("kitchen").findOne({ _id: "kitchen" as never }, show))
  yield* Console.log("kitchen:", JSON.stringify(dashboard))
})

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  Effect.runPromise(main.pipe(Effect.scoped, Effect.provide(App.layer({ embedded: true })), Effect.provide(Logging.layerConfig()))).catch((error) => {
    console.error(error)
    process.exit(1)
  })
}
