/**
 * effect-reconciler/testing: a test kit for projections — given/when/then specs
 * run by the real engine, random histories derived from the projection's event
 * schemas, and law checks with shrunk counter-examples. Runner-agnostic: every
 * check is an Effect that fails with a readable error.
 *
 * @since 0.1.0
 */
export * as History from "./History.js"
export * as ProjectionLaws from "./ProjectionLaws.js"
export * as ProjectionSpec from "./ProjectionSpec.js"
