/** Version 2 of the test ledger that folds as version 1 (a refactor), as a module for the command line. */
import { same } from "./ledger-v2.js"

export const projections = [same]
