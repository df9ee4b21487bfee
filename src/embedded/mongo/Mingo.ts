/**
 * mingo, set up for the embedded server: every default operator, with the
 * ordering comparisons (`$gt`, `$gte`, `$lt`, `$lte`) made exact on numbers of
 * any width ({@link Wide} values included), as MongoDB compares them. mingo's
 * own comparisons see numbers only as doubles and a Wide as a foreign type.
 *
 * @internal
 */
import { Aggregator as AggregatorBase } from "mingo/aggregator"
import { Context } from "mingo/core"
import * as accumulatorOperators from "mingo/operators/accumulator"
import * as expressionOperators from "mingo/operators/expression"
import * as pipelineOperators from "mingo/operators/pipeline"
import * as projectionOperators from "mingo/operators/projection"
import * as queryOperators from "mingo/operators/query"
import * as windowOperators from "mingo/operators/window"
import { Query as QueryBase } from "mingo/query"
import { ensureArray, resolve } from "mingo/util"
import { compareExact, exactOf, Wide } from "./Numbers.js"

type QueryOperator = (selector: string, value: unknown, options: unknown) => (obj: unknown) => boolean

const isNumeric = (v: unknown) => typeof v === "number" || v instanceof Wide

/**
 * An ordering operator that compares numbers exactly when its argument is a
 * number; anything else goes to mingo's operator unchanged.
 */
const exactly = (original: QueryOperator, holds: (order: number) => boolean): QueryOperator => (selector, value, options) => {
  if (!isNumeric(value)) return original(selector, value, options)
  const pivot = exactOf(value)!
  return (obj) => {
    for (const v of ensureArray(resolve(obj as never, selector, { unwrapArray: true }))) {
      if (isNumeric(v) && holds(compareExact(exactOf(v)!, pivot))) return true
    }
    return false
  }
}

const query = queryOperators as unknown as Record<string, QueryOperator>

const context = Context.init({
  accumulator: accumulatorOperators as never,
  expression: expressionOperators as never,
  pipeline: pipelineOperators as never,
  projection: projectionOperators as never,
  query: {
    ...query,
    $gt: exactly(query.$gt!, (c) => c > 0),
    $gte: exactly(query.$gte!, (c) => c >= 0),
    $lt: exactly(query.$lt!, (c) => c < 0),
    $lte: exactly(query.$lte!, (c) => c <= 0)
  } as never,
  window: windowOperators as never
})

type QueryOptions = NonNullable<ConstructorParameters<typeof QueryBase>[1]>

/** mingo's `Query` with exact number comparisons. */
export class Query extends QueryBase {
  constructor(condition: ConstructorParameters<typeof QueryBase>[0], options: Omit<QueryOptions, "context"> = {}) {
    super(condition, { ...options, context } as QueryOptions)
  }
}

type AggregatorOptions = NonNullable<ConstructorParameters<typeof AggregatorBase>[1]>

/** mingo's `Aggregator` with exact number comparisons in `$match`. */
export class Aggregator extends AggregatorBase {
  constructor(pipeline: ConstructorParameters<typeof AggregatorBase>[0], options: Omit<AggregatorOptions, "context"> = {}) {
    super(pipeline, { ...options, context } as AggregatorOptions)
  }
}
